//! Encoded answers from the zone, kept by question: a query asked again (by another
//! client, with another id, in another letter case) is answered by copying bytes instead
//! of parsing it and building the answer again. Only zone answers are kept (their TTLs do
//! not count down), and all of them go when the zone changes. So do the queries the zone
//! forwards, also kept: asked again, they go to the forwarder's cache without being parsed.

use std::collections::{HashMap, HashSet};

/// The answers of one zone, by query, and the queries it forwards.
pub struct AnswerCache {
    /// Which zone the answers are of (its address; a new zone is a new allocation).
    zone: usize,
    answers: HashMap<Vec<u8>, Vec<u8>>,
    forwarded: HashSet<Vec<u8>>,
    /// Most answers, and most forwarded queries, kept (all go when there are more).
    limit: usize,
}

/// What the zone makes of a query it has seen before.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// This answer, with the query's id and letter case.
    Answer(Vec<u8>),
    /// The name is not the zone's: it goes to the forwarder.
    Forward,
}

/// A query as the cache knows it: everything but its id, with the question's name in
/// lower case, behind a byte for the transport; and where the name ends.
pub struct Key {
    bytes: Vec<u8>,
    name_end: usize,
}

impl Key {
    /// The key's bytes (one per query with the same answer, whatever its id and case).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the question's name ends in the query (it starts after the 12-byte header).
    pub fn name_end(&self) -> usize {
        self.name_end
    }
}

const HEADER: usize = 12;

/// Where the first question's name ends in `message` (a query or an answer; the name
/// starts after the 12-byte header), past its terminating zero. `None` for a name that is
/// not plain labels (a pointer, a reserved label type) or that runs past the message.
pub(crate) fn question_name_end(message: &[u8]) -> Option<usize> {
    let mut at = HEADER;
    loop {
        let len = usize::from(*message.get(at)?);
        if len == 0 {
            return Some(at + 1);
        }
        if len > 63 {
            return None; // a pointer or a reserved label type
        }
        at += 1 + len;
    }
}

/// The key of `query`, over `transport` (0: UDP, 1: TCP). `None` for what is not one
/// question with a plain name (a pointer, a runt): such queries are answered the long way.
pub fn key(query: &[u8], transport: u8) -> Option<Key> {
    if query.len() < HEADER + 5 || query[4..6] != [0, 1] {
        return None;
    }
    let at = question_name_end(query)?;
    let mut bytes = Vec::with_capacity(query.len() - 1);
    bytes.push(transport);
    bytes.extend_from_slice(&query[2..HEADER]);
    bytes.extend(query[HEADER..at].iter().map(u8::to_ascii_lowercase));
    bytes.extend_from_slice(&query[at..]);
    Some(Key {
        bytes,
        name_end: at,
    })
}

impl AnswerCache {
    pub fn new(limit: usize) -> AnswerCache {
        AnswerCache {
            zone: 0,
            answers: HashMap::new(),
            forwarded: HashSet::new(),
            limit,
        }
    }

    /// Forgets everything kept when `zone` is not the zone it was kept for.
    fn follow(&mut self, zone: usize) {
        if zone != self.zone {
            self.answers.clear();
            self.forwarded.clear();
            self.zone = zone;
        }
    }

    /// What `zone` made of `query` (whose key is `key`) before: its answer, with the
    /// query's id and its question's letter case, or that it forwards it.
    pub fn get(&mut self, zone: usize, key: &Key, query: &[u8]) -> Option<Kept> {
        self.follow(zone);
        if let Some(answer) = self.answers.get(&key.bytes) {
            let mut answer = answer.clone();
            answer[..2].copy_from_slice(&query[..2]);
            answer[HEADER..key.name_end].copy_from_slice(&query[HEADER..key.name_end]);
            return Some(Kept::Answer(answer));
        }
        self.forwarded.contains(&key.bytes).then_some(Kept::Forward)
    }

    /// Notes that `zone` forwards `key`'s query.
    pub fn put_forward(&mut self, zone: usize, key: &Key) {
        self.follow(zone);
        if self.forwarded.len() >= self.limit {
            self.forwarded.clear();
        }
        self.forwarded.insert(key.bytes.clone());
    }

    /// Keeps `answer` (the zone's to `key`'s query) if it starts with the query's question,
    /// as the zone's answers do.
    pub fn put(&mut self, zone: usize, key: &Key, answer: &[u8]) {
        self.follow(zone);
        let question = &key.bytes[1 + HEADER - 2..1 + key.name_end - 2];
        let same_question = answer.len() >= key.name_end
            && answer[HEADER..key.name_end].eq_ignore_ascii_case(question);
        if !same_question {
            return;
        }
        if self.answers.len() >= self.limit {
            self.answers.clear();
        }
        self.answers.insert(key.bytes.clone(), answer.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` A, id `id`, RD set.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn a_kept_answer_gets_the_askers_id_and_case_and_goes_with_its_zone() {
        let mut cache = AnswerCache::new(10);
        let first = query(7, "Web.prod.svc.cluster.local");
        let k = key(&first, 0).unwrap();
        // An answer: the query with QR set and one answer record after it.
        let mut answer = first.clone();
        answer[2] |= 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 10]);
        cache.put(1, &k, &answer);

        let again = query(9, "wEB.PROD.svc.cluster.local");
        let k2 = key(&again, 0).unwrap();
        let Some(Kept::Answer(got)) = cache.get(1, &k2, &again) else {
            panic!("kept");
        };
        assert_eq!(&got[..2], &9u16.to_be_bytes());
        assert_eq!(&got[12..12 + 28], &again[12..12 + 28]);
        assert_eq!(&got[12 + 28..], &answer[12 + 28..]);
        // Over TCP it is another key; with a new zone nothing is kept.
        assert!(cache.get(1, &key(&again, 1).unwrap(), &again).is_none());
        assert!(cache.get(2, &k2, &again).is_none());
        assert!(cache.get(1, &k2, &again).is_none());
    }

    #[test]
    fn a_forwarded_query_is_known_by_its_key_until_the_zone_changes() {
        let mut cache = AnswerCache::new(2);
        let asked = query(1, "www.Example.org");
        cache.put_forward(1, &key(&asked, 0).unwrap());
        let again = query(2, "WWW.example.ORG");
        assert_eq!(
            cache.get(1, &key(&again, 0).unwrap(), &again),
            Some(Kept::Forward)
        );
        assert_eq!(cache.get(1, &key(&again, 1).unwrap(), &again), None);
        assert_eq!(cache.get(2, &key(&again, 0).unwrap(), &again), None);
        // Past the limit, all go.
        for name in ["a.org", "b.org", "c.org"] {
            cache.put_forward(2, &key(&query(1, name), 0).unwrap());
        }
        assert_eq!(
            cache.get(2, &key(&query(1, "a.org"), 0).unwrap(), &query(1, "a.org")),
            None
        );
    }

    #[test]
    fn queries_that_are_not_one_plain_question_have_no_key() {
        let mut two = query(1, "a.b");
        two[5] = 2;
        assert!(key(&two, 0).is_none());
        let mut pointer = query(1, "a.b");
        pointer[12] = 0xc0;
        assert!(key(&pointer, 0).is_none());
        assert!(key(&query(1, "a.b")[..14], 0).is_none());
    }
}
