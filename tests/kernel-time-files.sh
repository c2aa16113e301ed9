# Sourced by tests/kernel-time.sh and tests/kernel-time-ab.sh: the files their runs start from.

# write_server PORT FILE: a Python TCP server on 127.0.0.1:PORT that prints "ready" once
# listening and answers every connection with a name and closes it.
write_server() {
    cat >"$2" <<PY
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", $1))
s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"b0\n")
    c.close()
PY
}

# write_cluster VIP PORT FILE: a node, and one TCP service VIP:80 whose one endpoint is
# 127.0.0.1:PORT on that node, as `lbctl agent --manifests` reads them.
write_cluster() {
    cat >"$3" <<YAML
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec:
  clusterIP: $1
  clusterIPs: [$1]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: $2}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc12
  namespace: default
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports: [{name: http, port: $2, protocol: TCP}]
endpoints:
  - addresses: ["127.0.0.1"]
    nodeName: node-a
    conditions: {ready: true, serving: true, terminating: false}
YAML
}
