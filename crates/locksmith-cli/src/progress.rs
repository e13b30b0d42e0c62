//! A spinner on stderr while a wait takes long, only when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner that shows while it lives (if stderr is a terminal) and clears on drop.
#[derive(Debug)]
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Starts a spinner saying `message`; a no-op when stderr is not a terminal.
    pub fn start(message: String) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// Runs `wait`; if `quick` (a non-waiting attempt) fails first, shows a spinner saying
/// `message` while `wait` blocks.
pub fn wait_with_spinner<T, E>(
    message: impl FnOnce() -> String,
    quick: impl FnOnce() -> Result<Option<T>, E>,
    wait: impl FnOnce() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    if let Some(done) = quick()? {
        return Ok(Some(done));
    }
    let _spinner = Spinner::start(message());
    wait()
}
