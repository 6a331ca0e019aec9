//! The connection slots of `lifehook serve`: a bounded set, in which an
//! idle or slow connection gives way to a new one, so that peers that send
//! nothing cannot keep an authenticated trigger out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The connection slots of the server. A slot is held from accept to close.
/// With every slot taken, a new connection takes the slot of the oldest one
/// still waiting for its request (idle, or sending slowly), which is then
/// closed: peers that connect and send nothing, or send slowly, cannot keep
/// an authenticated trigger waiting; only connections whose request is
/// being answered keep their slot, and a new one waits for one of them.
pub(super) struct Slots {
    max: usize,
    open: Mutex<VecDeque<Arc<SlotState>>>,
    freed: Notify,
}

/// One connection's part in [`Slots`].
pub(super) struct SlotState {
    /// 0 waiting for the request, 1 answering it, 2 taken back.
    phase: AtomicU8,
    pub(super) taken_back: Notify,
}

const WAITING: u8 = 0;
const ANSWERING: u8 = 1;
const TAKEN_BACK: u8 = 2;

impl SlotState {
    /// Marks the request as complete; false if the slot was taken back.
    pub(super) fn begin_request(&self) -> bool {
        self.phase
            .compare_exchange(WAITING, ANSWERING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the slot back if its connection has not sent a request yet.
    fn take_back(&self) -> bool {
        let taken = self
            .phase
            .compare_exchange(WAITING, TAKEN_BACK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if taken {
            self.taken_back.notify_one();
        }
        taken
    }
}

/// A held slot; dropping it frees it.
pub(super) struct Slot {
    slots: Arc<Slots>,
    pub(super) state: Arc<SlotState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(i) = open.iter().position(|s| Arc::ptr_eq(s, &self.state)) {
            open.remove(i);
        }
        drop(open);
        self.slots.freed.notify_one();
    }
}

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            open: Mutex::new(VecDeque::with_capacity(max)),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<SlotState>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits, at most `limit`, until no connection is being answered.
    pub(super) async fn settle(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let freed = self.freed.notified();
            let answering = self
                .lock()
                .iter()
                .any(|s| s.phase.load(Ordering::Acquire) == ANSWERING);
            if !answering || tokio::time::timeout_at(until, freed).await.is_err() {
                return;
            }
        }
    }

    /// A slot for a new connection: a free one, the oldest waiting one's,
    /// or, when every connection is being answered, the first to free up.
    pub(super) async fn admit(self: &Arc<Slots>) -> Slot {
        loop {
            let freed = self.freed.notified();
            {
                let mut open = self.lock();
                if open.len() >= self.max
                    && let Some(i) = open.iter().position(|s| s.take_back())
                {
                    open.remove(i);
                }
                if open.len() < self.max {
                    let state = Arc::new(SlotState {
                        phase: AtomicU8::new(WAITING),
                        taken_back: Notify::new(),
                    });
                    open.push_back(state.clone());
                    return Slot {
                        slots: self.clone(),
                        state,
                    };
                }
            }
            freed.await;
        }
    }
}
