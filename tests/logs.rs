//! Decision logs: one debug event per launched batch, with its fields.

mod common;

use common::{echo_runtime, WaitBounded};

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use convoy::Request;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Counts convoy's "batch launched" events and the fields they carry.
#[derive(Default)]
struct Count {
    batches: AtomicUsize,
    with_fields: AtomicUsize,
}

struct Fields {
    message: String,
    seen: usize,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
        if ["worker", "size", "tokens", "reason", "aged"].contains(&field.name()) {
            self.seen += 1;
        }
    }
    fn record_u64(&mut self, field: &Field, _: u64) {
        if ["worker", "size", "tokens", "aged"].contains(&field.name()) {
            self.seen += 1;
        }
    }
}

struct Shared(Arc<Count>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::DEBUG
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        if !e.metadata().target().starts_with("convoy") || *e.metadata().level() != Level::DEBUG {
            return;
        }
        let mut f = Fields {
            message: String::new(),
            seen: 0,
        };
        e.record(&mut f);
        if f.message == "batch launched" {
            self.0.batches.fetch_add(1, Ordering::Relaxed);
            if f.seen == 5 {
                self.0.with_fields.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn every_batch_is_logged_at_debug_with_its_decision() {
    let count = Arc::new(Count::default());
    tracing::subscriber::set_global_default(Shared(count.clone())).unwrap();
    let rt = echo_runtime(2);
    let h = rt.handle();
    let ts: Vec<_> = (0..300)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    rt.shutdown();
    let batches = rt.stats().batches as usize;
    assert!(batches > 0);
    assert_eq!(
        count.batches.load(Ordering::Relaxed),
        batches,
        "one event per batch"
    );
    assert_eq!(
        count.with_fields.load(Ordering::Relaxed),
        batches,
        "worker, size, tokens, reason, aged"
    );
}
