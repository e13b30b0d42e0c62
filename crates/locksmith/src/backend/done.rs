//! A one-shot signal: set once by a helper (a thread, a detached task), awaited or
//! waited for by whoever depends on it finishing.

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// Whether a piece of work finished; starts unset.
#[derive(Debug, Default)]
pub(crate) struct Done {
    flag: AtomicBool,
    event: Event,
}

impl Done {
    /// Marks the work finished and wakes everyone waiting for it.
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Whether [`Done::set`] was called.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Completes once it is set.
    pub(crate) async fn wait(&self) {
        loop {
            // Listening before looking: a `set` in between still wakes the listener.
            let listener = self.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn an_async_wait_ends_when_another_thread_sets_it() {
        let done = Arc::new(Done::default());
        let d = done.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let setter = std::thread::spawn(move || d.set());
            tokio::time::timeout(Duration::from_secs(60), done.wait())
                .await
                .expect("woken by the set");
            setter.join().unwrap();
        });
    }
}
