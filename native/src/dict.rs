//! An insertion-ordered map with a Python dict's `d[k] = v`: a key already there keeps its
//! place and takes the new value. Linear search while small (the common case: a handful of
//! attributes), a hash index beyond, so a message with many keys costs linear time.

use std::collections::HashMap;

const INDEX_FROM: usize = 16;

pub struct Dict<'a, V> {
    pub entries: Vec<(&'a str, V)>,
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a, V> Dict<'a, V> {
    pub fn with_capacity(n: usize) -> Self {
        Dict {
            entries: Vec::with_capacity(n),
            index: None,
        }
    }

    /// `entries` must not repeat a key.
    pub fn from_unique(entries: Vec<(&'a str, V)>) -> Self {
        let mut out = Dict {
            entries,
            index: None,
        };
        out.reindex();
        out
    }

    pub fn insert(&mut self, key: &'a str, value: V) {
        let at = match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        };
        match at {
            Some(i) => self.entries[i].1 = value,
            None => {
                if let Some(index) = &mut self.index {
                    index.insert(key, self.entries.len());
                }
                self.entries.push((key, value));
                if self.index.is_none() && self.entries.len() > INDEX_FROM {
                    self.reindex();
                }
            }
        }
    }

    /// Remove `key`, keeping the others' order (`dict.pop`).
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let at = match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        }?;
        let (_, value) = self.entries.remove(at);
        self.reindex();
        Some(value)
    }

    fn reindex(&mut self) {
        self.index = (self.entries.len() > INDEX_FROM).then(|| {
            self.entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (*k, i))
                .collect()
        });
    }
}
