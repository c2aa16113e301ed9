//! Planning by Service: the same rules as [`super::plan`], kept as state so that a change to a
//! few Services costs only those Services.
//!
//! A [`Planner`] holds, per Service, the frontends it offers (in its offer order) and its own
//! skipped input and warnings, and per frontend (address, port, protocol) every claim on it, in
//! claim order. The first claim is the frontend planned, so a change to one Service re-decides
//! exactly the frontends it offered before or offers now: when it stops claiming a frontend
//! another Service also claims, that one wins it.
//!
//! [`Planner::update`] takes *all* the objects of the changed Services (the Service, if it still
//! exists, and every EndpointSlice labelled with its name) and returns the frontends whose
//! planned value may have changed. [`Planner::plan`] gives exactly the [`Plan`] that
//! [`super::plan`] computes over the same objects (tested below). Pure: no I/O.
//!
//! What a Service change cannot alter is planned only by [`Planner::new`]: this Node (a Node
//! change re-plans everything) and EndpointSlices without a `kubernetes.io/service-name` label
//! (they belong to no Service; their skip entries are refreshed by the next full plan).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use smallvec::SmallVec;

use super::{
    NodeContext,
    claims::{lost_reason, sort_offer},
    node::ThisNode,
    report::{self, Report, service_object},
    service::plan_service,
    services_in_claim_order,
    slices::SliceIndex,
};
use crate::{
    model::{EndpointSlice, Inventory, Service},
    plan::{Frontend, FrontendKey, Plan, ServiceRef, Skipped},
};

/// One claim on a frontend: the claiming Service's age, the frontend's place in that Service's
/// offer order, and the frontend it plans. Held for every frontend, so the age is two plain
/// fields (not an `Option<Time>` and a flag: 144 bytes a claim then) and a claim is 120 bytes.
#[derive(Debug)]
struct Claim {
    /// The Service's creation time, as whole seconds and the nanoseconds past them (negative
    /// before 1970, as jiff gives them), which order as the time does; [`Claim::UNDATED`] for
    /// a Service without one, which comes after every dated one.
    seconds: i64,
    nanos: i32,
    offer: u32,
    frontend: Frontend,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Claim>() == 120);

impl Claim {
    const UNDATED: (i64, i32) = (i64::MAX, i32::MAX);

    /// The age fields of a Service created at `time`.
    fn age(time: Option<&Time>) -> (i64, i32) {
        time.map_or(Self::UNDATED, |t| {
            (t.0.as_second(), t.0.subsec_nanosecond())
        })
    }

    /// Claim order: older first (undated last), then the Service's namespace/name, the
    /// frontend's own [`Frontend::service`] (as in `services_in_claim_order`, so a claim does
    /// not hold the name twice), then offer order.
    fn rank(&self) -> ((i64, i32), &ServiceRef, u32) {
        (
            (self.seconds, self.nanos),
            &self.frontend.service,
            self.offer,
        )
    }
}

/// The claims on one frontend, in claim order: the first is planned. Almost always one, held
/// inline in the space of one claim (no allocation of its own: a vector took a heap block of
/// about 180 bytes for each of 30,000 frontends, and a one-element `SmallVec` 40 bytes more
/// than the claim).
#[derive(Debug, Default)]
enum Claims {
    /// Every claimant withdrew (until [`Planner::update`] drops the key).
    #[default]
    Empty,
    One(Claim),
    /// Two or more, in claim order.
    Many(Vec<Claim>),
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Claims>() == size_of::<Claim>());

impl Claims {
    fn as_slice(&self) -> &[Claim] {
        match self {
            Claims::Empty => &[],
            Claims::One(claim) => std::slice::from_ref(claim),
            Claims::Many(claims) => claims,
        }
    }

    /// Adds `claim` in its place (replacing an equal-ranked one).
    fn insert(&mut self, claim: Claim) {
        let mut claims = match std::mem::take(self) {
            Claims::Empty => {
                *self = Claims::One(claim);
                return;
            }
            Claims::One(one) => vec![one],
            Claims::Many(many) => many,
        };
        match claims.binary_search_by(|c| c.rank().cmp(&claim.rank())) {
            Ok(i) => claims[i] = claim,
            Err(i) => claims.insert(i, claim),
        }
        *self = Claims::from(claims);
    }

    /// Removes the claim of `service` made by its frontend at `offer`.
    fn remove(&mut self, service: &ServiceRef, offer: u32) {
        let made = |c: &Claim| c.offer == offer && c.frontend.service == *service;
        match self {
            Claims::Empty => {}
            Claims::One(one) => {
                if made(one) {
                    *self = Claims::Empty;
                }
            }
            Claims::Many(many) => {
                many.retain(|c| !made(c));
                if many.len() < 2 {
                    *self = Claims::from(std::mem::take(many));
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        matches!(self, Claims::Empty)
    }

    /// The frontends, the planned one first.
    fn values(&self) -> impl Iterator<Item = &Frontend> {
        self.as_slice().iter().map(|claim| &claim.frontend)
    }
}

impl From<Vec<Claim>> for Claims {
    /// In claim order already.
    fn from(mut claims: Vec<Claim>) -> Self {
        if claims.len() > 1 {
            return Claims::Many(claims);
        }
        claims.pop().map_or(Claims::Empty, Claims::One)
    }
}

/// What one Service (or the slices of a Service that does not exist) contributes. Kept for
/// every Service, so kept small: most Services claim one key (held inline) and report nothing
/// (no report vectors).
#[derive(Debug, Default)]
struct Entry {
    /// Whether a served Service of this name exists (else only its slices do).
    served: bool,
    /// The keys it claims, in its offer order.
    keys: SmallVec<[FrontendKey; 1]>,
    /// Its skipped input and warnings, when it has any.
    reports: Option<Box<(Vec<Skipped>, Vec<String>)>>,
}

impl Entry {
    fn reports(&self) -> bool {
        self.reports.is_some()
    }

    fn skipped(&self) -> &[Skipped] {
        self.reports.as_deref().map_or(&[], |(skipped, _)| skipped)
    }

    fn warnings(&self) -> &[String] {
        self.reports
            .as_deref()
            .map_or(&[], |(_, warnings)| warnings)
    }
}

/// The Service an EndpointSlice belongs to, by its `kubernetes.io/service-name` label; `None`
/// without one (the engine skips such a slice).
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceRef> {
    slice.service_ref()
}

/// The Service ref of a Service object (namespace defaulted as the engine does).
pub fn service_ref_of(svc: &Service) -> ServiceRef {
    report::service_ref(svc)
}

/// The plan of one node, kept by Service so it can be updated by Service.
#[derive(Debug)]
pub struct Planner {
    node: NodeContext,
    this_node: ThisNode,
    /// Skipped input and warnings no Service change alters: the Node, unlabelled slices.
    fixed: (Vec<Skipped>, Vec<String>),
    entries: BTreeMap<ServiceRef, Entry>,
    /// Every claim on each frontend; the first one is planned.
    claims: BTreeMap<FrontendKey, Claims>,
    /// Frontends with more than one claim (the others are skipped).
    contested: BTreeSet<FrontendKey>,
    /// Services with skipped input or warnings of their own.
    reporting: BTreeSet<ServiceRef>,
}

/// The objects of an inventory by Service (namespace, name), borrowed: served Services and
/// labelled slices, for [`Planner::update`] (a few Services; [`Planner::new`] groups by sorting).
type Groups<'a> = HashMap<(&'a str, &'a str), (Vec<&'a Service>, Vec<&'a EndpointSlice>)>;

fn group<'a>(inventory: &'a Inventory, node: &NodeContext) -> Groups<'a> {
    let mut groups: Groups<'a> = HashMap::with_capacity(inventory.services.len());
    for svc in inventory
        .services
        .iter()
        .map(|svc| &**svc)
        .filter(|svc| node.serves(svc))
    {
        groups
            .entry((&*svc.namespace, svc.name()))
            .or_default()
            .0
            .push(svc);
    }
    for slice in inventory.endpoint_slices.iter().map(|slice| &**slice) {
        if let Some(name) = slice.service() {
            groups
                .entry((&*slice.namespace, name))
                .or_default()
                .1
                .push(slice);
        }
    }
    groups
}

/// The ref of a group's Service, sharing the strings of its objects (the Service's name, the
/// interned namespace) rather than copying them.
fn group_ref(
    namespace: &str,
    name: &str,
    service: Option<&Service>,
    slice: Option<&EndpointSlice>,
) -> ServiceRef {
    if let Some(svc) = service
        && let Some(svc_name) = &svc.name
    {
        return ServiceRef {
            namespace: svc.namespace.clone(),
            name: svc_name.clone(),
        };
    }
    let namespace = service
        .map(|svc| svc.namespace.clone())
        .or_else(|| slice.map(|slice| slice.namespace.clone()))
        .unwrap_or_else(|| namespace.into());
    ServiceRef {
        namespace,
        name: name.into(),
    }
}

impl Planner {
    /// Plans everything in `inventory` for `node` (the state [`super::plan`] computes).
    pub fn new(inventory: &Inventory, node: &NodeContext) -> Self {
        let mut fixed = Report::default();
        let this_node = ThisNode::resolve(&inventory.nodes, node, &mut fixed);
        // Services and labelled slices, each sorted by Service (stable: a Service's objects
        // keep their input order), walked side by side: one group per Service with no
        // allocation per group.
        let mut services: Vec<((&str, &str), &Service)> = inventory
            .services
            .iter()
            .map(|svc| &**svc)
            .filter(|svc| node.serves(svc))
            .map(|svc| ((&*svc.namespace, svc.name()), svc))
            .collect();
        services.sort_by_key(|(key, _)| *key);
        let mut unlabelled = Vec::new();
        let mut slices: Vec<((&str, &str), &EndpointSlice)> =
            Vec::with_capacity(inventory.endpoint_slices.len());
        for slice in inventory.endpoint_slices.iter().map(|slice| &**slice) {
            match slice.service() {
                Some(name) => slices.push(((&*slice.namespace, name), slice)),
                None => unlabelled.push(slice),
            }
        }
        slices.sort_by_key(|(key, _)| *key);
        // Only for their skip entries: these slices feed no Service.
        SliceIndex::build(unlabelled, &mut fixed);
        let mut planner = Planner {
            node: node.clone(),
            this_node,
            fixed: fixed.finish(),
            entries: BTreeMap::new(),
            claims: BTreeMap::new(),
            contested: BTreeSet::new(),
            reporting: BTreeSet::new(),
        };
        // In Service order: the entries are built in one pass at the end, not inserted one by
        // one. Nothing is "affected" in a new plan.
        let mut entries: Vec<(ServiceRef, Entry)> = Vec::new();
        let (mut services, mut slices) = (&services[..], &slices[..]);
        while let Some(key) = match (services.first(), slices.first()) {
            (Some((a, _)), Some((b, _))) => Some((*a).min(*b)),
            (Some((a, _)), None) => Some(*a),
            (None, Some((b, _))) => Some(*b),
            (None, None) => None,
        } {
            let (group_services, rest) =
                services.split_at(services.iter().take_while(|(k, _)| *k == key).count());
            services = rest;
            let (group_slices, rest) =
                slices.split_at(slices.iter().take_while(|(k, _)| *k == key).count());
            slices = rest;
            let svc_ref = group_ref(
                key.0,
                key.1,
                group_services.first().map(|(_, svc)| *svc),
                group_slices.first().map(|(_, slice)| *slice),
            );
            entries.extend(planner.plan_one(
                svc_ref,
                group_services.iter().map(|(_, svc)| *svc),
                group_slices.iter().map(|(_, slice)| *slice),
                None,
            ));
        }
        planner.reporting = entries
            .iter()
            .filter(|(_, entry)| entry.reports())
            .map(|(svc_ref, _)| svc_ref.clone())
            .collect();
        planner.entries = entries.into_iter().collect();
        // Claimed one by one, mostly in key order: nodes half full otherwise.
        let claimed = planner.claims.len();
        crate::compact::refill_after(&mut planner.claims, claimed);
        planner
    }

    /// Re-plans the Services in `dirty` from `inventory`, which must hold every object of each
    /// of them (objects of other Services in it are ignored). Returns the frontends whose
    /// planned value ([`Planner::frontend`]) may have changed.
    pub fn update(
        &mut self,
        inventory: &Inventory,
        dirty: &BTreeSet<ServiceRef>,
    ) -> BTreeSet<FrontendKey> {
        let mut affected = BTreeSet::new();
        let mut emptied = Vec::new();
        let mut groups = group(inventory, &self.node);
        for svc_ref in dirty {
            self.withdraw(svc_ref, &mut affected, &mut emptied);
            let (services, slices) = groups
                .remove(&(&*svc_ref.namespace, &*svc_ref.name))
                .unwrap_or_default();
            let planned = self.plan_one(
                svc_ref.clone(),
                services.into_iter(),
                slices.into_iter(),
                Some(&mut affected),
            );
            self.keep(svc_ref, planned);
        }
        // The frontends no Service claims any more, once every changed Service has offered
        // its own again.
        for key in emptied {
            if self.claims.get(&key).is_some_and(Claims::is_empty) {
                self.claims.remove(&key);
            }
        }
        affected
    }

    /// The frontend planned for `key`, if any.
    pub fn frontend(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.claims.get(key)?.values().next()
    }

    /// The planned frontend of `key`, with the key as the planner holds it.
    pub fn keyed_frontend(&self, key: &FrontendKey) -> Option<(&FrontendKey, &Frontend)> {
        let (key, claims) = self.claims.get_key_value(key)?;
        Some((key, claims.values().next()?))
    }

    /// Number of frontends planned.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Every planned frontend, in key order.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.claims
            .values()
            .filter_map(|claims| claims.values().next())
    }

    /// Every planned frontend with its key, in key order (one per key).
    pub fn keyed_frontends(&self) -> impl Iterator<Item = (&FrontendKey, &Frontend)> {
        self.claims
            .iter()
            .filter_map(|(key, claims)| Some((key, claims.values().next()?)))
    }

    /// Skipped input and warnings, as [`Plan::skipped`] and [`Plan::warnings`] (sorted,
    /// de-duplicated). Costs the Services that have any, not all Services.
    pub fn report(&self) -> (Vec<Skipped>, Vec<String>) {
        let mut report = Report::default();
        for s in &self.fixed.0 {
            report.skip(s.object.clone(), s.reason.clone());
        }
        for w in &self.fixed.1 {
            report.warn(w.clone());
        }
        for entry in self.reporting.iter().filter_map(|r| self.entries.get(r)) {
            for s in entry.skipped() {
                report.skip(s.object.clone(), s.reason.clone());
            }
            for w in entry.warnings() {
                report.warn(w.clone());
            }
        }
        for claims in self.contested.iter().filter_map(|k| self.claims.get(k)) {
            let mut claims = claims.values();
            let Some(owner) = claims.next() else { continue };
            for loser in claims {
                report.skip(service_object(&loser.service), lost_reason(loser, owner));
            }
        }
        report.finish()
    }

    /// The whole plan (walks every frontend).
    pub fn plan(&self) -> Plan {
        let mut frontends: Vec<Frontend> = self.frontends().cloned().collect();
        frontends.sort_by(|a, b| {
            (&a.service, a.kind, a.address, a.port, a.protocol)
                .cmp(&(&b.service, b.kind, b.address, b.port, b.protocol))
        });
        let (skipped, warnings) = self.report();
        Plan {
            node: self.node.name.clone(),
            frontends,
            skipped,
            warnings,
        }
    }

    fn plan_one<'a>(
        &mut self,
        svc_ref: ServiceRef,
        services: impl Iterator<Item = &'a Service>,
        slices: impl Iterator<Item = &'a EndpointSlice>,
        mut affected: Option<&mut BTreeSet<FrontendKey>>,
    ) -> Option<(ServiceRef, Entry)> {
        let mut report = Report::default();
        let index = SliceIndex::build(slices, &mut report);
        let chosen = services_in_claim_order(services, &mut report);
        let mut entry = Entry::default();
        if let Some(svc) = chosen.first() {
            let (seconds, nanos) = Claim::age(svc.creation_timestamp.as_ref());
            let mut frontends = plan_service(svc, &index, &self.this_node, &mut report);
            sort_offer(&mut frontends);
            for (i, frontend) in frontends.into_iter().enumerate() {
                let key = frontend.key();
                entry.keys.push(key);
                if let Some(affected) = affected.as_deref_mut() {
                    affected.insert(key);
                }
                let claims = self.claims.entry(key).or_default();
                claims.insert(Claim {
                    seconds,
                    nanos,
                    offer: i as u32,
                    frontend,
                });
                if claims.len() > 1 {
                    self.contested.insert(key);
                }
            }
            entry.keys.shrink_to_fit();
            entry.served = true;
        }
        let (skipped, warnings) = report.finish();
        if !skipped.is_empty() || !warnings.is_empty() {
            entry.reports = Some(Box::new((skipped, warnings)));
        }
        (entry.reports() || entry.served).then_some((svc_ref, entry))
    }

    /// Records what [`Planner::plan_one`] returned for `svc_ref` (the Service's entry, if it
    /// has one) where [`Planner::withdraw`] left its old entry.
    ///
    /// The maps are changed in place wherever the key stays: the planner's maps are rebuilt
    /// with full nodes after a full plan (`compact`), and removing a key then inserting it
    /// again moves it between nodes (a key of an inner node is replaced by its predecessor
    /// and comes back in a leaf), which splits full nodes one by one: under sustained endpoint
    /// churn that grew the agent's heap by about 5 MB at 30,000 Services (BENCHMARKS.md).
    fn keep(&mut self, svc_ref: &ServiceRef, planned: Option<(ServiceRef, Entry)>) {
        let Some((planned_ref, entry)) = planned else {
            self.entries.remove(svc_ref);
            return;
        };
        if entry.reports() {
            self.reporting.insert(planned_ref.clone());
        }
        match self.entries.get_mut(&planned_ref) {
            Some(slot) => *slot = entry,
            None => {
                self.entries.insert(planned_ref, entry);
            }
        }
    }

    /// Takes back what `svc_ref` planned: its claims, and its entry (an empty one stays in its
    /// place until [`Planner::keep`]). Frontends left without a claim stay as empty claims,
    /// listed in `emptied`, for [`Planner::update`] to drop once every changed Service has
    /// offered its own again.
    fn withdraw(
        &mut self,
        svc_ref: &ServiceRef,
        affected: &mut BTreeSet<FrontendKey>,
        emptied: &mut Vec<FrontendKey>,
    ) {
        self.reporting.remove(svc_ref);
        let Some(entry) = self.entries.get_mut(svc_ref).map(std::mem::take) else {
            return;
        };
        if !entry.served {
            return;
        }
        for (i, key) in entry.keys.into_iter().enumerate() {
            affected.insert(key);
            let Some(claims) = self.claims.get_mut(&key) else {
                continue;
            };
            claims.remove(svc_ref, i as u32);
            if claims.len() <= 1 {
                self.contested.remove(&key);
            }
            if claims.is_empty() {
                emptied.push(key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
