//! A spinner on stderr while a wait takes long, only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a wait goes on before the spinner shows.
const DELAY: Duration = Duration::from_millis(700);

/// A spinner that shows once a wait has taken [`DELAY`] (if stderr is a terminal) and
/// clears on drop.
#[derive(Debug)]
pub struct Spinner(Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>);

impl Spinner {
    /// Starts a spinner saying `message`; a no-op when stderr is not a terminal.
    pub fn start(message: String) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let (done, wait) = mpsc::channel::<()>();
        let shower = thread::spawn(move || {
            if wait.recv_timeout(DELAY) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_elapsed(DELAY);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(message);
            bar.enable_steady_tick(Duration::from_millis(120));
            let _ = wait.recv();
            bar.finish_and_clear();
        });
        Spinner(Some((done, shower)))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some((done, shower)) = self.0.take() {
            drop(done);
            let _ = shower.join();
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
