//! The object store behind the stand-in API server: objects keyed by resource type,
//! namespace and name; one global resourceVersion counter; a bounded history of change
//! events for watch resumption; owner-reference garbage collection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    /// `group/plural` of the object's type.
    pub type_key: String,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The object before a modification (for selector transitions).
    pub old: Option<Value>,
}

pub(crate) type Key = (String, String, String);

pub(crate) struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Arc<Change>>,
    pub history_limit: usize,
    /// Resuming a watch from a resourceVersion below this answers 410 Gone.
    pub compacted: u64,
    pub tx: broadcast::Sender<Arc<Change>>,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(1 << 16);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            tx,
        }
    }

    fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Forgets every past event: resuming from any resourceVersion seen so far answers 410.
    pub fn compact_all(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores a new or changed object (giving it the next resourceVersion) and publishes
    /// the event. `old` is the stored object it replaces.
    pub fn put(&mut self, type_key: &str, mut object: Value, old: Option<Value>) -> Value {
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let namespace = ns_of(&object);
        let key = (type_key.to_string(), namespace.clone(), name_of(&object));
        self.objects.insert(key, object.clone());
        self.publish(Change {
            rv,
            type_key: type_key.into(),
            namespace,
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
            old,
        });
        object
    }

    /// Removes an object for good, then collects its dependents (owner references):
    /// those with finalizers are marked for deletion, the others removed in turn.
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(Change {
            rv,
            type_key: key.0.clone(),
            namespace: key.1.clone(),
            kind: "DELETED",
            object: object.clone(),
            old: None,
        });
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in dependents {
            self.delete(&dependent);
        }
        Some(object)
    }

    /// Deletes as the API server does: with finalizers the object only gets a
    /// deletionTimestamp; without, it is removed (and its dependents collected).
    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        let object = self.objects.get(key)?.clone();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !finalizers {
            return self.remove(key);
        }
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(object);
        }
        let mut marked = object.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        Some(self.put(&key.0, marked, Some(object)))
    }
}

pub(crate) fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn ns_of(object: &Value) -> String {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
