//! Longest-prefix partitions: sets of prefixes, each carrying the bits of the rules that
//! match its addresses, laid out so that a longest-prefix-match lookup (the kernel's LPM
//! trie) returns exactly the union of the rules matching the looked-up value.
//!
//! A rule matches a set of values given as prefixes (`include`) minus prefixes (`exclude`:
//! an `ipBlock`'s `except`). Every prefix named by any rule becomes an entry; an entry's
//! bits are the rules one of whose includes contains it and none of whose excludes does.
//! Why that is exact: the entry found for a value `v` is the most specific named prefix `P`
//! containing `v`, so every named prefix containing `v` contains `P` (prefixes containing
//! one value are nested), and a named prefix not containing `v` cannot contain `P`.

/// A prefix of a `WIDTH`-bit value: the top `len` bits of `value` (the rest are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Prefix {
    pub value: u32,
    pub len: u8,
}

impl Prefix {
    /// `value` with its bits past `len` (of `width`) cleared.
    pub fn new(value: u32, len: u8, width: u8) -> Prefix {
        debug_assert!(len <= width && width <= 32);
        Prefix {
            value: value & mask(len, width),
            len,
        }
    }

    /// Whether every value under `other` is under `self` (both of `width` bits).
    pub fn contains(&self, other: &Prefix, width: u8) -> bool {
        self.len <= other.len && other.value & mask(self.len, width) == self.value
    }

    pub fn contains_value(&self, value: u32, width: u8) -> bool {
        value & mask(self.len, width) == self.value
    }
}

fn mask(len: u8, width: u8) -> u32 {
    if len == 0 {
        0
    } else {
        let full = if width == 32 {
            u32::MAX
        } else {
            (1u32 << width) - 1
        };
        full & !((1u64 << (width - len)) - 1) as u32
    }
}

/// What one rule bit matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    pub include: Vec<Prefix>,
    pub exclude: Vec<Prefix>,
}

/// The entries for `rules` (bit `i` of a value is `rules[i]`), most general first. Entries
/// whose bits equal those of the entry above them (the next less specific one) are left
/// out: the lookup finds the one above and gets the same answer. An entry with no bits is
/// kept where the one above has some (an `except`); at the top it is left out (a miss
/// means no bits).
pub fn partition(rules: &[(u64, &Matcher)], width: u8) -> Vec<(Prefix, u64)> {
    let mut named: Vec<Prefix> = rules
        .iter()
        .flat_map(|(_, m)| m.include.iter().chain(&m.exclude).copied())
        .collect();
    named.sort_by_key(|p| (p.len, p.value));
    named.dedup();
    let bits_of = |p: &Prefix| -> u64 {
        rules
            .iter()
            .filter(|(_, m)| {
                m.include.iter().any(|i| i.contains(p, width))
                    && !m.exclude.iter().any(|e| e.contains(p, width))
            })
            .fold(0, |acc, (bits, _)| acc | bits)
    };
    // Most general first, so each entry's parent (if any) is already decided.
    let mut out = Vec::new();
    let mut decided: Vec<(Prefix, u64)> = Vec::with_capacity(named.len());
    for p in named {
        let bits = bits_of(&p);
        // The closest less specific named prefix: what a lookup would find without `p`.
        let parent = decided
            .iter()
            .rev()
            .find(|(q, _)| q.len < p.len && q.contains(&p, width))
            .map(|(_, b)| *b)
            .unwrap_or(0);
        decided.push((p, bits));
        if bits != parent {
            out.push((p, bits));
        }
    }
    out
}

/// The bits a longest-prefix lookup of `value` finds in `entries`.
pub fn lookup(entries: &[(Prefix, u64)], value: u32, width: u8) -> u64 {
    entries
        .iter()
        .filter(|(p, _)| p.contains_value(value, width))
        .max_by_key(|(p, _)| p.len)
        .map(|(_, b)| *b)
        .unwrap_or(0)
}

/// The prefixes covering the range `lo..=hi` of `width`-bit values, fewest first-to-last.
pub fn range_prefixes(lo: u32, hi: u32, width: u8) -> Vec<Prefix> {
    let mut out = Vec::new();
    let mut lo = u64::from(lo);
    let hi = u64::from(hi);
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size_bits = if lo == 0 {
            u32::from(width)
        } else {
            lo.trailing_zeros().min(u32::from(width))
        };
        while size_bits > 0 && lo + (1u64 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push(Prefix::new(lo as u32, width - size_bits as u8, width));
        lo += 1u64 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        let ip: std::net::Ipv4Addr = a.parse().unwrap();
        Prefix::new(u32::from(ip), l.parse().unwrap(), 32)
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn an_except_carves_a_hole_that_a_pod_inside_it_refills_for_its_own_rule() {
        let block = Matcher {
            include: vec![net("10.0.0.0/16")],
            exclude: vec![net("10.0.1.0/24")],
        };
        let pod = Matcher {
            include: vec![net("10.0.1.7/32")],
            exclude: vec![],
        };
        let world = Matcher {
            include: vec![net("0.0.0.0/0")],
            exclude: vec![net("10.0.0.0/8")],
        };
        let entries = partition(&[(1, &block), (2, &pod), (4, &world)], 32);
        for (addr, want) in [
            ("10.0.0.1", 1),
            ("10.0.1.1", 0),
            ("10.0.1.7", 2),
            ("10.0.2.9", 1),
            ("10.9.0.1", 0),
            ("192.0.2.1", 4),
            ("0.0.0.0", 4),
        ] {
            assert_eq!(lookup(&entries, ip(addr), 32), want, "{addr}");
        }
    }

    #[test]
    fn entries_that_repeat_their_parent_are_left_out() {
        let a = Matcher {
            include: vec![net("10.0.0.0/8"), net("10.1.0.0/16")],
            exclude: vec![],
        };
        let entries = partition(&[(1, &a)], 32);
        assert_eq!(entries, vec![(net("10.0.0.0/8"), 1)]);
    }

    #[test]
    fn the_partition_agrees_with_direct_matching_on_every_value_of_a_small_space() {
        // 8-bit values, every combination of a few overlapping rules.
        let width = 8;
        let p = |v: u32, l: u8| Prefix::new(v, l, width);
        let rules = [
            Matcher {
                include: vec![p(0x00, 1)],
                exclude: vec![p(0x40, 3), p(0x10, 8)],
            },
            Matcher {
                include: vec![p(0x40, 2), p(0xF0, 4)],
                exclude: vec![p(0x48, 5)],
            },
            Matcher {
                include: vec![p(0x4A, 8), p(0x11, 8)],
                exclude: vec![],
            },
            Matcher {
                include: vec![p(0, 0)],
                exclude: vec![p(0x80, 1)],
            },
        ];
        let with_bits: Vec<(u64, &Matcher)> =
            rules.iter().enumerate().map(|(i, m)| (1 << i, m)).collect();
        let entries = partition(&with_bits, width);
        for v in 0..=255u32 {
            let direct = with_bits
                .iter()
                .filter(|(_, m)| {
                    m.include.iter().any(|i| i.contains_value(v, width))
                        && !m.exclude.iter().any(|e| e.contains_value(v, width))
                })
                .fold(0, |a, (b, _)| a | b);
            assert_eq!(lookup(&entries, v, width), direct, "value {v:#x}");
        }
    }

    #[test]
    fn port_ranges_become_the_fewest_aligned_prefixes() {
        let r = |lo, hi| range_prefixes(lo, hi, 16);
        assert_eq!(r(80, 80), vec![Prefix::new(80, 16, 16)]);
        assert_eq!(r(0, 65535), vec![Prefix::new(0, 0, 16)]);
        assert_eq!(r(1, 65535).len(), 16);
        assert_eq!(
            r(8080, 8083),
            vec![Prefix::new(8080, 14, 16)],
            "8080-8083 is one aligned block of four"
        );
        for (lo, hi) in [
            (1, 1),
            (3, 17),
            (1000, 2000),
            (32768, 32769),
            (65534, 65535),
        ] {
            let prefixes = r(lo, hi);
            for v in 0..=65535u32 {
                let inside = prefixes.iter().any(|p| p.contains_value(v, 16));
                assert_eq!(inside, (lo..=hi).contains(&v), "{lo}-{hi} at {v}");
            }
        }
    }
}
