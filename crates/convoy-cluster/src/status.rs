//! A read of the whole pool for people and autoscalers: workers and
//! their capacity, what each frontend holds, which are live, and the
//! recent shortfalls (`convoy cluster status`).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::RedisResult;
use serde::Serialize;

use crate::pool::{Pool, WorkerInfo};

/// One worker in the pool.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// `HOST/LANE`.
    pub id: String,
    /// Requests it holds at once.
    pub slots: u32,
    /// Tokens it holds at once.
    pub tokens: u64,
    /// Its host's heartbeat is within the liveness window.
    pub live: bool,
    /// Milliseconds since its host's last heartbeat.
    pub seen_ms_ago: Option<u64>,
    /// Where it runs, if its host registered that.
    pub info: Option<WorkerInfo>,
    /// What live frontends hold there: (slots, tokens).
    pub held: (u64, u64),
}

/// One frontend that has joined the pool.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendStatus {
    /// `NAME#EPOCH`.
    pub id: String,
    /// Its heartbeat is within the liveness window (only then does its
    /// usage count).
    pub live: bool,
    /// Milliseconds since its last commit or heartbeat.
    pub seen_ms_ago: u64,
    /// What it holds, by worker: (slots, tokens).
    pub usage: BTreeMap<String, (u64, u64)>,
}

/// One shortfall record.
#[derive(Debug, Clone, Serialize)]
pub struct Shortfall {
    /// The stream entry's id (its time, ms, and a sequence number).
    pub id: String,
    /// The record's fields.
    pub fields: BTreeMap<String, String>,
}

/// The pool as `convoy cluster status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Every registered worker, by id.
    pub workers: Vec<WorkerStatus>,
    /// Every frontend that has not been pruned yet.
    pub frontends: Vec<FrontendStatus>,
    /// The last ten shortfall records, newest first.
    pub shortfalls: Vec<Shortfall>,
}

static STATUS: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/status.lua")));

/// The status script's reply, read: now, capacity, info, seen,
/// frontends with their beats, and each frontend's usage.
type Snapshot = (
    u64,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    BTreeMap<String, u64>,
    Vec<(String, u64)>,
    Vec<BTreeMap<String, String>>,
);

fn split(raw: Vec<redis::Value>) -> RedisResult<Snapshot> {
    let mut it = raw.into_iter();
    let mut next = || {
        it.next().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "short status reply"))
        })
    };
    let now: String = redis::from_redis_value(next()?)?;
    let capacity = redis::from_redis_value(next()?)?;
    let info = redis::from_redis_value(next()?)?;
    let seen: Vec<(String, String)> = redis::from_redis_value(next()?)?;
    let beats: Vec<(String, String)> = redis::from_redis_value(next()?)?;
    let num = |v: &str| v.parse::<f64>().unwrap_or(0.0) as u64;
    let seen = seen.into_iter().map(|(k, v)| (k, num(&v))).collect();
    let beats: Vec<(String, u64)> = beats.into_iter().map(|(k, v)| (k, num(&v))).collect();
    let mut usages = Vec::with_capacity(beats.len());
    for _ in 0..beats.len() {
        usages.push(redis::from_redis_value(next()?)?);
    }
    Ok((
        now.parse().unwrap_or(0),
        capacity,
        info,
        seen,
        beats,
        usages,
    ))
}

fn pair(v: &str) -> (u64, u64) {
    let mut it = v.split(',').map(|x| x.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

pub(crate) async fn read(
    pool: &Pool,
    conn: &mut ConnectionManager,
    window: Duration,
) -> RedisResult<PoolStatus> {
    let (now, capacity, info, seen, beats, usages): Snapshot = {
        let raw: Vec<redis::Value> = STATUS
            .key(pool.key("capacity"))
            .key(pool.key("info"))
            .key(pool.key("seen"))
            .key(pool.key("frontends"))
            .arg(pool.key("usage:"))
            .invoke_async(conn)
            .await?;
        split(raw)?
    };
    let window = window.as_millis() as u64;
    let mut frontends = Vec::new();
    let mut held: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((id, at), usage) in beats.into_iter().zip(usages) {
        let usage: BTreeMap<String, (u64, u64)> =
            usage.into_iter().map(|(w, v)| (w, pair(&v))).collect();
        let ago = now.saturating_sub(at);
        let live = ago <= window;
        if live {
            for (w, (s, t)) in &usage {
                let h = held.entry(w.clone()).or_default();
                h.0 += s;
                h.1 += t;
            }
        }
        frontends.push(FrontendStatus {
            id,
            live,
            seen_ms_ago: ago,
            usage,
        });
    }
    let workers = capacity
        .into_iter()
        .map(|(id, cap)| {
            let (slots, tokens) = pair(&cap);
            let ago = seen.get(&id).map(|at| now.saturating_sub(*at));
            WorkerStatus {
                slots: slots as u32,
                tokens,
                live: ago.is_some_and(|a| a <= window),
                seen_ms_ago: ago,
                info: info.get(&id).and_then(|j| serde_json::from_str(j).ok()),
                held: held.get(&id).copied().unwrap_or_default(),
                id,
            }
        })
        .collect();
    let raw: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(pool.key("shortfalls"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(10)
        .query_async(conn)
        .await?;
    let shortfalls = raw
        .ids
        .into_iter()
        .map(|e| Shortfall {
            fields: e
                .map
                .iter()
                .map(|(k, v)| {
                    let v: String = redis::from_redis_value_ref(v).unwrap_or_default();
                    (k.clone(), v)
                })
                .collect(),
            id: e.id,
        })
        .collect();
    Ok(PoolStatus {
        workers,
        frontends,
        shortfalls,
    })
}
