//! The pool in Redis: its keys, and the few calls frontends, worker hosts
//! and `convoy cluster status` make on it. Every write that must be
//! atomic is one server-side script (`lua/`), so each is one round trip.
//!
//! # Keys (all under `convoy:{POOL}:`, one hash slot)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `capacity` | hash | worker id → `slots,tokens` |
//! | `info` | hash | worker id → JSON ([`WorkerInfo`]) |
//! | `seen` | sorted set | worker id → its host's last heartbeat (ms, Redis time) |
//! | `frontends` | sorted set | frontend id → its last commit or heartbeat |
//! | `usage:FRONTEND` | hash | worker id → `slots,tokens` that frontend holds |
//! | `epoch` | counter | the last epoch handed to a joining frontend |
//! | `shortfalls` | stream | one record per shortfall episode |

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};

use crate::error::{check_name, ClusterError};

/// What a frontend needs to reach a worker, beyond its capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker host's address (`host:port`).
    pub addr: String,
    /// The lane on that host.
    pub lane: usize,
    /// Relative speed, for placement.
    pub speed: f64,
    /// Cost per hour, for placement.
    pub cost_per_hour: f64,
}

/// One worker as a worker host registers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// `HOST/LANE`.
    pub id: String,
    /// Requests it holds at once.
    pub slots: u32,
    /// Tokens it holds at once.
    pub tokens: u64,
    /// How to reach it.
    pub info: WorkerInfo,
}

/// A worker's share of the pool as one frontend may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The worker's id.
    pub worker: String,
    /// Its capacity less what every other live frontend holds there.
    pub slots: u32,
    /// The same, in tokens.
    pub tokens: u64,
}

/// What a commit answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitReply {
    /// This frontend's heartbeat had lapsed (or Redis lost it): it holds
    /// nothing in the pool until it rejoins under a new epoch.
    Fenced,
    /// One verdict per grant asked, and the next snapshot: every live
    /// worker with the room this frontend may use there.
    Done {
        /// `granted[i]`: grant `i` was committed.
        granted: Vec<bool>,
        /// Live workers and their room for this frontend.
        room: Vec<Room>,
    },
}

/// A handle on one pool in one Redis. Cheap to clone: the connection is
/// multiplexed and reconnects by itself after Redis restarts.
#[derive(Clone)]
pub struct Pool {
    url: String,
    prefix: String,
    conn: ConnectionManager,
}

/// How long one Redis call may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

static COMMIT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/commit.lua")));
static JOIN: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/join.lua")));
static REGISTER: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/register.lua")));

impl Pool {
    /// Connects to Redis at `url` (`redis://host:port/db`) and the pool
    /// named `pool`. Fails with a typed error on a bad URL or a Redis
    /// that does not answer a PING.
    pub async fn connect(url: &str, pool: &str) -> Result<Self, ClusterError> {
        check_name(pool)?;
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ClusterError::unreachable(url, "timed out"))?
        .map_err(|e| ClusterError::unreachable(url, e))?;
        let pool = Self {
            url: url.to_owned(),
            prefix: format!("convoy:{{{pool}}}:"),
            conn,
        };
        let _: String = redis::cmd("PING")
            .query_async(&mut pool.conn.clone())
            .await
            .map_err(|e| ClusterError::unreachable(url, e))?;
        Ok(pool)
    }

    /// One PING: a bare round trip, the floor under every call here.
    pub async fn ping(&self) -> RedisResult<String> {
        redis::cmd("PING").query_async(&mut self.conn.clone()).await
    }

    /// The URL this pool was reached at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key `name` of this pool.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Joins as frontend `name` under a fresh epoch; returns its id.
    pub async fn join(&self, name: &str) -> RedisResult<String> {
        JOIN.key(self.key("epoch"))
            .key(self.key("frontends"))
            .arg(name)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// One commit (`lua/commit.lua`): sets frontend `me`'s usage to
    /// `usage` (absolute), then asks `grants` in order, each granted only
    /// where the pool's free capacity covers it. One round trip.
    pub async fn commit(
        &self,
        me: &str,
        window: Duration,
        usage: &[(String, u32, u64)],
        grants: &[(String, u32, u64)],
    ) -> RedisResult<CommitReply> {
        let mut call = COMMIT.prepare_invoke();
        call.key(self.key("frontends"))
            .key(self.key("capacity"))
            .key(self.key("seen"))
            .key(self.key(&format!("usage:{me}")))
            .arg(me)
            .arg(window.as_millis().max(1) as u64)
            .arg(self.key("usage:"))
            .arg(usage.len());
        for (w, s, t) in usage {
            call.arg(w).arg(*s).arg(*t);
        }
        call.arg(grants.len());
        for (w, s, t) in grants {
            call.arg(w).arg(*s).arg(*t);
        }
        let reply: Vec<String> = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(parse_commit(&reply, grants.len()))
    }

    /// Leaves the pool: frontend `me` and what it held are gone at once
    /// (a clean shutdown; a crashed one lapses after the window).
    pub async fn leave(&self, me: &str) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(self.key("frontends"), me)
            .del(self.key(&format!("usage:{me}")));
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Registers (or refreshes) a worker host's workers; their heartbeat.
    pub async fn register(&self, workers: &[Registration]) -> RedisResult<()> {
        let mut call = REGISTER.prepare_invoke();
        call.key(self.key("capacity"))
            .key(self.key("info"))
            .key(self.key("seen"))
            .arg(workers.len());
        for w in workers {
            let info = serde_json::to_string(&w.info).expect("WorkerInfo always serialises");
            call.arg(&w.id).arg(w.slots).arg(w.tokens).arg(info);
        }
        let _: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Takes a worker host's workers out of the pool (a clean shutdown).
    pub async fn deregister(&self, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(self.key("seen"), ids)
            .hdel(self.key("capacity"), ids)
            .hdel(self.key("info"), ids);
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Appends a shortfall record (capped at the last 1000).
    pub async fn shortfall(&self, fields: &[(&str, String)]) -> RedisResult<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key("shortfalls"))
            .arg("MAXLEN")
            .arg("~")
            .arg(1000)
            .arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let _: String = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Where every registered worker is.
    pub async fn infos(&self) -> RedisResult<std::collections::HashMap<String, WorkerInfo>> {
        let raw: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("info"))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, j)| Some((id, serde_json::from_str(&j).ok()?)))
            .collect())
    }

    /// Everything `convoy cluster status` shows; `window` decides which
    /// workers and frontends count as live.
    pub async fn status(&self, window: Duration) -> RedisResult<crate::status::PoolStatus> {
        crate::status::read(self, &mut self.conn.clone(), window).await
    }
}

/// Reads a commit's reply (see `lua/commit.lua`).
fn parse_commit(reply: &[String], asked: usize) -> CommitReply {
    match reply.first().map(String::as_str) {
        Some("ok") => {}
        _ => return CommitReply::Fenced,
    }
    let granted = reply
        .get(1)
        .map(|g| g.bytes().map(|b| b == b'1').collect())
        .unwrap_or_else(|| vec![false; asked]);
    let room = reply
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(3)
        .filter_map(|c| {
            Some(Room {
                worker: c[0].clone(),
                slots: c[1].parse().ok()?,
                tokens: c[2].parse().ok()?,
            })
        })
        .collect();
    CommitReply::Done { granted, room }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_reply_reads_its_verdicts_and_room() {
        let r: Vec<String> = ["ok", "101", "h/0", "4", "100", "h/1", "0", "0"]
            .map(String::from)
            .into();
        assert_eq!(
            parse_commit(&r, 3),
            CommitReply::Done {
                granted: vec![true, false, true],
                room: vec![
                    Room {
                        worker: "h/0".into(),
                        slots: 4,
                        tokens: 100
                    },
                    Room {
                        worker: "h/1".into(),
                        slots: 0,
                        tokens: 0
                    },
                ],
            }
        );
        assert_eq!(parse_commit(&["fenced".to_owned()], 2), CommitReply::Fenced);
    }
}
