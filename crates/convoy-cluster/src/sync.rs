//! The local fleet as a mirror of the pool: each commit's snapshot adds
//! the workers that joined, gives each the room this frontend may use
//! there (its capacity less what the other live frontends hold), drains
//! a worker with no room, and downs one whose host stopped beating. The
//! local collector then plans against that view, and the commit decides.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use convoy::{Capacity, Health, Runtime, WorkerSpec};

use crate::pool::{Room, WorkerInfo};

/// How to reach one remote worker; index `i` is local worker `i`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Remote {
    pub(crate) id: String,
    pub(crate) info: WorkerInfo,
}

/// What was last applied to one local worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    health: Health,
    slots: u32,
    tokens: u64,
}

/// The mirror's state (owned by the committer thread).
pub(crate) struct Mirror {
    pub(crate) remotes: Arc<ArcSwap<Vec<Remote>>>,
    /// Where each worker is, as last read from the pool.
    infos: HashMap<String, WorkerInfo>,
    applied: Vec<Applied>,
}

/// The local spec of a remote worker with `room`.
pub(crate) fn spec(room: &Room, info: &WorkerInfo) -> WorkerSpec {
    WorkerSpec {
        name: room.worker.clone(),
        capacity: Capacity {
            slots: room.slots.max(1),
            tokens: room.tokens.max(1),
            // The pool does not count bytes.
            bytes: u64::MAX,
        },
        speed: info.speed,
        cost_per_hour: info.cost_per_hour,
    }
}

impl Mirror {
    /// A mirror of `remotes`, as the runtime was built with them.
    pub(crate) fn new(
        remotes: Arc<ArcSwap<Vec<Remote>>>,
        infos: HashMap<String, WorkerInfo>,
        rooms: &[Room],
    ) -> Self {
        let applied = rooms
            .iter()
            .map(|r| Applied {
                health: Health::Up,
                slots: r.slots.max(1),
                tokens: r.tokens.max(1),
            })
            .collect();
        Self {
            remotes,
            infos,
            applied,
        }
    }

    /// Applies one snapshot (every live worker and its room) to `rt`;
    /// `read_infos` reads where the workers are, called only when one
    /// joined that the mirror has not met (off the batch path).
    /// A worker the snapshot does not name is down; one named with no
    /// room drains; one with room is up with that capacity. Control
    /// calls go out only for what changed.
    pub(crate) fn apply<I: Send + 'static, O: Send + 'static>(
        &mut self,
        rooms: &[Room],
        rt: &Runtime<I, O>,
        read_infos: impl FnOnce() -> Option<HashMap<String, WorkerInfo>>,
    ) {
        let remotes = self.remotes.load_full();
        let index: HashMap<&str, usize> = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let mut seen = vec![false; remotes.len()];
        let mut joined = Vec::new();
        for room in rooms {
            match index.get(room.worker.as_str()) {
                Some(&i) => {
                    seen[i] = true;
                    let want = if room.slots == 0 || room.tokens == 0 {
                        Applied {
                            health: Health::Draining,
                            ..self.applied[i]
                        }
                    } else {
                        Applied {
                            health: Health::Up,
                            slots: room.slots,
                            tokens: room.tokens,
                        }
                    };
                    self.set(rt, i, want);
                }
                None => joined.push(room),
            }
        }
        for (i, seen) in seen.iter().enumerate() {
            if !seen {
                let down = Applied {
                    health: Health::Down,
                    ..self.applied[i]
                };
                self.set(rt, i, down);
            }
        }
        if joined.is_empty() {
            return;
        }
        if joined.iter().any(|r| !self.infos.contains_key(&r.worker)) {
            if let Some(fresh) = read_infos() {
                self.infos = fresh;
            }
        }
        for room in joined {
            if room.slots == 0 || room.tokens == 0 {
                continue; // joins when it has room for us
            }
            let Some(info) = self.infos.get(&room.worker).cloned() else {
                continue; // its info comes with the next read of the pool
            };
            // The mapping first: the collector may place a batch on the
            // new worker as soon as `add_worker` returns.
            let mut next = (*self.remotes.load_full()).clone();
            next.push(Remote {
                id: room.worker.clone(),
                info: info.clone(),
            });
            let at = next.len() - 1;
            self.remotes.store(Arc::new(next));
            match rt.add_worker(spec(room, &info)) {
                Ok(i) if i == at => self.applied.push(Applied {
                    health: Health::Up,
                    slots: room.slots,
                    tokens: room.tokens,
                }),
                Ok(i) => {
                    tracing::error!(i, at, "worker index out of step with the mirror");
                    return;
                }
                Err(e) => {
                    // Shutting down: take the mapping back.
                    let mut back = (*self.remotes.load_full()).clone();
                    back.pop();
                    self.remotes.store(Arc::new(back));
                    tracing::debug!(error = %e, "no worker added");
                    return;
                }
            }
        }
    }

    fn set<I: Send + 'static, O: Send + 'static>(
        &mut self,
        rt: &Runtime<I, O>,
        i: usize,
        want: Applied,
    ) {
        let had = self.applied[i];
        if had == want {
            return;
        }
        if (want.slots, want.tokens) != (had.slots, had.tokens) {
            let cap = Capacity {
                slots: want.slots,
                tokens: want.tokens,
                bytes: u64::MAX,
            };
            let _ = rt.set_capacity(i, cap);
        }
        if want.health != had.health {
            let _ = rt.set_health(i, want.health);
        }
        self.applied[i] = want;
    }
}
