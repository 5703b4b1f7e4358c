//! The Responses API's store: responses kept in memory for `GET`/`DELETE /v1/responses/{id}`, `input_items` and
//! `previous_response_id`, bounded by count (`[server] responses_max`, the oldest leave first) and by age
//! (`[server] responses_ttl`). Nothing survives a restart, as nothing in OpenAI's contract asks it to. The
//! clock is given (`now`), so the rules are tested without time passing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::responses::{Item, ResponseObject};

/// One kept response.
#[derive(Debug, Clone)]
pub struct Kept {
    pub response: Arc<ResponseObject>,
    /// Its own input items (`input_items` lists them).
    pub input: Arc<Vec<Item>>,
    /// The response its request named as `previous_response_id`: a chain is linked, not copied at every turn, so
    /// a conversation of N turns holds N turns (not N² of them). A link keeps an earlier turn alive after it
    /// leaves the store, for as long as a later turn is kept.
    pub previous: Option<Arc<Kept>>,
}

impl Kept {
    /// The whole conversation up to and including this response's output: each turn's input, then its output,
    /// oldest first. What a next turn's `previous_response_id` puts before its own input.
    pub fn history(&self) -> Vec<Item> {
        let mut turns = vec![self];
        while let Some(previous) = turns.last().and_then(|k| k.previous.as_deref()) {
            turns.push(previous);
        }
        turns
            .iter()
            .rev()
            .flat_map(|k| k.input.iter().chain(&k.response.output))
            .cloned()
            .collect()
    }
}

impl Drop for Kept {
    /// Unlinks a chain iteratively: dropping the last turn of a long conversation would otherwise recurse once per
    /// turn.
    fn drop(&mut self) {
        let mut next = self.previous.take();
        while let Some(link) = next {
            next = match Arc::try_unwrap(link) {
                Ok(mut turn) => turn.previous.take(),
                // Still held elsewhere (kept in the store, or by another turn): nothing more to free.
                Err(_) => None,
            };
        }
    }
}

#[derive(Debug)]
struct Entry {
    kept: Kept,
    at: Instant,
}

/// The limits in force (read from the running configuration at each insert, so a reload applies).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub ttl: Duration,
}

#[derive(Debug, Default)]
pub struct ResponseStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// Ids, oldest first (a deleted id stays here until it reaches the front: skipped then).
    order: VecDeque<String>,
}

impl ResponseStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `kept` under its response's id, dropping expired responses and, past `limits.max`, the oldest.
    pub fn insert(&self, kept: Kept, limits: Limits, now: Instant) {
        let mut inner = self.lock();
        let id = kept.response.id.clone();
        if inner
            .by_id
            .insert(id.clone(), Entry { kept, at: now })
            .is_none()
        {
            inner.order.push_back(id);
        }
        while let Some(front) = inner.order.front().cloned() {
            let expired = inner
                .by_id
                .get(&front)
                .is_none_or(|e| now.saturating_duration_since(e.at) >= limits.ttl);
            if expired || inner.by_id.len() > limits.max {
                inner.order.pop_front();
                inner.by_id.remove(&front);
            } else {
                break;
            }
        }
        // `order` holds deleted ids until they reach the front; bound it as well.
        if inner.order.len() > 2 * limits.max.max(1) {
            let Inner { by_id, order } = &mut *inner;
            order.retain(|id| by_id.contains_key(id));
        }
    }

    /// The response kept under `id`, unless it has expired.
    pub fn get(&self, id: &str, ttl: Duration, now: Instant) -> Option<Kept> {
        let inner = self.lock();
        let entry = inner.by_id.get(id)?;
        (now.saturating_duration_since(entry.at) < ttl).then(|| entry.kept.clone())
    }

    /// Forgets `id`; whether it was there (and not expired).
    pub fn delete(&self, id: &str, ttl: Duration, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.by_id.remove(id) {
            Some(e) => now.saturating_duration_since(e.at) < ttl,
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::ResponsesIn;

    fn kept(id: &str) -> Kept {
        let req: ResponsesIn = serde_json::from_str(r#"{"model":"m","input":"hi"}"#).unwrap();
        Kept {
            response: Arc::new(req.skeleton(id, 0, "m")),
            input: Arc::new(req.items(id).unwrap()),
            previous: None,
        }
    }

    #[test]
    fn a_chain_is_linked_and_its_history_is_every_turn_in_order() {
        let one = Arc::new(kept("resp_one"));
        let mut two = kept("resp_two");
        two.previous = Some(one.clone());
        let mut three = kept("resp_three");
        three.previous = Some(Arc::new(two));
        let ids: Vec<String> = three.history().iter().map(|i| i.id().to_string()).collect();
        assert_eq!(ids, ["msg_one_in0", "msg_two_in0", "msg_three_in0"]);
        assert_eq!(one.history().len(), 1);
        // A chain far longer than a stack allows for recursion is dropped without overflowing it.
        let mut last = kept("resp_0");
        for i in 1..200_000 {
            let mut next = kept(&format!("resp_{i}"));
            next.previous = Some(Arc::new(last));
            last = next;
        }
        drop(last);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_oldest_leave_first_past_the_bound() {
        let store = ResponseStore::default();
        let t = Instant::now();
        let limits = Limits { max: 2, ttl: HOUR };
        for (i, id) in ["resp_a", "resp_b", "resp_c"].iter().enumerate() {
            store.insert(kept(id), limits, t + Duration::from_secs(i as u64));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("resp_a", HOUR, t).is_none(), "the oldest left");
        assert!(store.get("resp_b", HOUR, t).is_some());
        assert_eq!(
            store.get("resp_c", HOUR, t).unwrap().input[0].id(),
            "msg_c_in0"
        );
    }

    #[test]
    fn responses_expire_after_the_ttl() {
        let store = ResponseStore::default();
        let t = Instant::now();
        let ttl = Duration::from_secs(60);
        store.insert(kept("resp_a"), Limits { max: 10, ttl }, t);
        assert!(store
            .get("resp_a", ttl, t + Duration::from_secs(59))
            .is_some());
        assert!(store
            .get("resp_a", ttl, t + Duration::from_secs(60))
            .is_none());
        // An insert sweeps what has expired.
        store.insert(
            kept("resp_b"),
            Limits { max: 10, ttl },
            t + Duration::from_secs(61),
        );
        assert_eq!(store.len(), 1);
        assert!(!store.delete("resp_a", ttl, t + Duration::from_secs(61)));
    }

    #[test]
    fn a_deleted_response_is_gone_and_its_slot_is_free() {
        let store = ResponseStore::default();
        let t = Instant::now();
        let limits = Limits { max: 2, ttl: HOUR };
        store.insert(kept("resp_a"), limits, t);
        store.insert(kept("resp_b"), limits, t);
        assert!(store.delete("resp_a", HOUR, t));
        assert!(!store.delete("resp_a", HOUR, t), "deleted once");
        assert!(store.get("resp_a", HOUR, t).is_none());
        store.insert(kept("resp_c"), limits, t);
        assert!(
            store.get("resp_b", HOUR, t).is_some(),
            "b keeps the slot a left"
        );
        assert!(store.get("resp_c", HOUR, t).is_some());
        // Many inserts and deletes keep the order list bounded.
        for i in 0..100 {
            let id = format!("resp_x{i}");
            store.insert(kept(&id), limits, t);
            store.delete(&id, HOUR, t);
        }
        assert!(
            store.lock().order.len() <= 4,
            "{}",
            store.lock().order.len()
        );
    }
}
