//! The demo's terminal output: coloured on a terminal, plain when piped or with `NO_COLOR`.
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset.
    pub fn detect() -> Self {
        Self {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn plain() -> Self {
        Self { color: false }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    pub fn cyan(&self, text: &str) -> String {
        self.paint("36", text)
    }

    /// A section title.
    pub fn step(&self, text: &str) {
        println!("\n{}", self.paint("1;34", &format!("==> {text}")));
    }

    /// A command as typed at a prompt: `kiada-001$ curl -s quote-local`.
    pub fn command(&self, prompt: &str, command: &str) {
        println!(
            "{} {}",
            self.cyan(&format!("{prompt}$")),
            self.bold(command)
        );
    }

    /// A remark about what was just shown.
    pub fn note(&self, text: &str) {
        println!("{}", self.dim(&format!("   {text}")));
    }

    /// Prints a block of program output as it came.
    pub fn output(&self, text: &str) {
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
    }
}
