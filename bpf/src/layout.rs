//! What to do with each map an earlier run pinned: reuse it, migrate its entries into a
//! map of this build's layout, or replace it with an empty one. The decision ([`plan`]) is
//! pure; the layout record and the entry copies are the kernel edges.
//!
//! The record is a pinned hash map, [`maps::LAYOUT`], not a file: bpffs holds only BPF
//! objects and directories, and a record elsewhere (the state directory) could outlive
//! the pins (bpffs is gone after a reboot) or be lost while they stay. Pinned in the same
//! directory, it lives exactly as long as the maps it describes.

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use twill_abi::{
    layout::{Conversion, Layout, MapLayout, record_key},
    maps,
};

/// A map as the kernel describes it (or as the object file defines it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// What the layout record says about a pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// There is no record at all: the pins are from a twilld older than the record. Their
    /// version is inferred from their sizes.
    NoRecord,
    /// The record exists but names no version for this map (a migration of it was
    /// interrupted): its layout is unknown.
    Missing,
    Version(u32),
}

/// What to do with one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing pinned: the loader creates the map.
    Create,
    /// Pinned with this build's layout and shape: used as it is.
    Reuse,
    /// A new map of this build's shape; the old one's entries are copied into it, through
    /// the conversion from `from` when `convert` (else byte for byte: same layout, another
    /// capacity).
    Migrate {
        from: u32,
        convert: bool,
        why: String,
    },
    /// A new, empty map: the old entries cannot be read as this build's layout.
    Reset { why: String },
}

/// `BPF_MAP_TYPE_*` of the maps whose entries [`copy_entries`] can walk and write.
const HASH: u32 = 1;
const ARRAY: u32 = 2;
const LRU_HASH: u32 = 9;
const LPM_TRIE: u32 = 11;

/// Whether the programs add entries to maps of this type themselves (conntrack, reverse
/// NAT, affinity, flow rate limits: all LRU hashes). Only those need the second copy of a
/// migration ([`crate::Datapath::finish_migrations`]); every other map is written by the
/// daemon alone, which has written the new map since the load.
pub(crate) fn datapath_writes(map_type: u32) -> bool {
    map_type == LRU_HASH
}

fn copyable(map_type: u32) -> bool {
    matches!(map_type, HASH | ARRAY | LRU_HASH | LPM_TRIE)
}

/// Decides what to do with map `layout.name`, pinned as `pinned` (`None`: not pinned),
/// given what the record says and the shape this build's object defines.
pub fn plan(
    layout: &MapLayout,
    expected: MapShape,
    pinned: Option<MapShape>,
    recorded: Recorded,
) -> Plan {
    let Some(pinned) = pinned else {
        return Plan::Create;
    };
    let current = layout.current;
    let sizes = |l: &Layout| l.key_size == pinned.key_size && l.value_size == pinned.value_size;
    let version = match recorded {
        Recorded::Version(v) => v,
        Recorded::Missing => {
            return Plan::Reset {
                why: "its layout version is not in the layout record (an earlier migration \
                      was interrupted)"
                    .into(),
            };
        }
        // Pins from before the record: the layout whose sizes they have, if any.
        Recorded::NoRecord => {
            let known = std::iter::once(&current).chain(layout.conversions.iter().map(|c| &c.from));
            match known.into_iter().find(|l| sizes(l)) {
                Some(l) => l.version,
                None => {
                    return Plan::Reset {
                        why: format!(
                            "its key and value sizes ({} and {} bytes) are no layout this \
                             build knows",
                            pinned.key_size, pinned.value_size
                        ),
                    };
                }
            }
        }
    };
    if pinned.map_type != expected.map_type {
        return Plan::Reset {
            why: format!(
                "its map type changed ({} -> {})",
                pinned.map_type, expected.map_type
            ),
        };
    }
    if version > current.version {
        return Plan::Reset {
            why: format!(
                "it has layout version {version}, newer than this build's {} (a downgrade)",
                current.version
            ),
        };
    }
    if version == current.version {
        if !sizes(&current) {
            return Plan::Reset {
                why: format!(
                    "its sizes ({}/{} bytes) disagree with layout version {version} ({}/{})",
                    pinned.key_size, pinned.value_size, current.key_size, current.value_size
                ),
            };
        }
        if pinned.max_entries == expected.max_entries {
            return Plan::Reuse;
        }
        let why = format!(
            "capacity {} -> {} entries",
            pinned.max_entries, expected.max_entries
        );
        return if copyable(pinned.map_type) {
            Plan::Migrate {
                from: version,
                convert: false,
                why,
            }
        } else {
            Plan::Reset {
                why: format!("{why}, and its entries cannot be copied"),
            }
        };
    }
    match layout.conversion_from(version) {
        Some(c) if sizes(&c.from) && copyable(pinned.map_type) => Plan::Migrate {
            from: version,
            convert: true,
            why: format!("layout version {version} -> {}", current.version),
        },
        Some(c) => Plan::Reset {
            why: format!(
                "its sizes ({}/{} bytes) disagree with layout version {version} ({}/{})",
                pinned.key_size, pinned.value_size, c.from.key_size, c.from.value_size
            ),
        },
        None => Plan::Reset {
            why: format!(
                "layout version {version} -> {} has no conversion",
                current.version
            ),
        },
    }
}

/// What happened to one map at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapChange {
    pub name: &'static str,
    pub plan: Plan,
    /// Entries carried into the new map (migrations).
    pub copied: usize,
    /// Entries the conversion refused or the new map had no room for.
    pub dropped: usize,
}

impl fmt::Display for MapChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plan {
            Plan::Create => write!(f, "{}: created", self.name),
            Plan::Reuse => write!(f, "{}: reused", self.name),
            Plan::Migrate { why, .. } => write!(
                f,
                "{}: migrated ({why}): {} entries carried, {} dropped",
                self.name, self.copied, self.dropped
            ),
            Plan::Reset { why } => write!(
                f,
                "{}: reset to empty because {why}; its entries are gone",
                self.name
            ),
        }
    }
}

/// The layout record pinned under a node's pin directory.
pub(crate) struct LayoutRecord {
    map: Option<HashMap<MapData, [u8; 16], u32>>,
}

impl LayoutRecord {
    /// Opens the record pinned in `pin_dir`, if there is one.
    pub(crate) fn open(pin_dir: &Path) -> LayoutRecord {
        let map = MapData::from_pin(pin_dir.join(maps::LAYOUT))
            .ok()
            .and_then(|data| HashMap::try_from(aya::maps::Map::HashMap(data)).ok());
        LayoutRecord { map }
    }

    pub(crate) fn recorded(&self, name: &str) -> Recorded {
        match &self.map {
            None => Recorded::NoRecord,
            Some(m) => m
                .get(&record_key(name), 0)
                .map_or(Recorded::Missing, Recorded::Version),
        }
    }

    /// Forgets `name`'s version: done before its pin is replaced, so an interrupted
    /// replacement leaves the map "unknown" (reset next time), never misrecorded.
    pub(crate) fn forget(&mut self, name: &str) {
        if let Some(m) = &mut self.map {
            let _ = m.remove(&record_key(name));
        }
    }

    /// Puts back what [`Self::recorded`] said of `name` (after a failed replacement).
    pub(crate) fn restore(&mut self, name: &str, recorded: Recorded) {
        if let (Some(m), Recorded::Version(v)) = (&mut self.map, recorded) {
            let _ = m.insert(record_key(name), v, 0);
        }
    }

    /// Records every map of `layouts` at its current version, creating the record first
    /// if there is none.
    pub(crate) fn write_all(
        &mut self,
        pin_dir: &Path,
        layouts: &[MapLayout],
    ) -> Result<(), aya::maps::MapError> {
        if self.map.is_none() {
            // BPF_MAP_TYPE_HASH, 16-byte names to u32 versions; room for every map.
            let def = aya_obj::Map::new_from_params(HASH, 16, 4, 256, 0);
            let data = MapData::create(def, maps::LAYOUT, None)?;
            data.pin(pin_dir.join(maps::LAYOUT)).map_err(|error| {
                aya::maps::MapError::PinError {
                    name: Some(maps::LAYOUT.into()),
                    error,
                }
            })?;
            self.map = Some(HashMap::try_from(aya::maps::Map::HashMap(data))?);
        }
        let map = self.map.as_mut().expect("created above");
        for l in layouts {
            map.insert(record_key(l.name), l.current.version, 0)?;
        }
        Ok(())
    }
}

/// How entries are carried from an old map into a new one.
#[derive(Clone, Copy)]
pub(crate) enum Carry {
    /// Byte for byte (same layout).
    Copy,
    Convert(Conversion),
}

/// Copies every entry of `old` (of shape `from`) into `new` (of shape `to`), converted by
/// `carry`. Entries `new` already has are kept (`BPF_NOEXIST`), so a second pass only
/// adds what the old map gained since the first. Returns (copied, dropped).
pub(crate) fn copy_entries(
    old: BorrowedFd<'_>,
    from: MapShape,
    new: BorrowedFd<'_>,
    to: MapShape,
    carry: Carry,
) -> (usize, usize) {
    let (mut copied, mut dropped) = (0, 0);
    let mut key = vec![0u8; from.key_size as usize];
    let mut next = vec![0u8; from.key_size as usize];
    let mut value = vec![0u8; from.value_size as usize];
    let mut new_key = vec![0u8; to.key_size as usize];
    let mut new_value = vec![0u8; to.value_size as usize];
    let mut first = true;
    // A walk restarts when the key it stands on is deleted under it (the programs expire
    // and add flows meanwhile): bounded, so a busy map cannot keep it going.
    for _ in 0..u64::from(from.max_entries) * 2 + 1 {
        let more = raw::next_key(old, (!first).then_some(&key[..]), &mut next);
        if !more {
            break;
        }
        first = false;
        key.copy_from_slice(&next);
        if !raw::lookup(old, &key, &mut value) {
            continue;
        }
        new_key.fill(0);
        new_value.fill(0);
        let ok = match carry {
            Carry::Copy => {
                new_key.copy_from_slice(&key);
                new_value.copy_from_slice(&value);
                true
            }
            Carry::Convert(c) => (c.convert)(&key, &value, &mut new_key, &mut new_value),
        };
        let flags = if to.map_type == ARRAY {
            raw::ANY
        } else {
            raw::NOEXIST
        };
        match ok.then(|| raw::update(new, &new_key, &new_value, flags)) {
            Some(Ok(())) => copied += 1,
            // Already there: written by the new programs or by the first pass.
            Some(Err(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            _ => dropped += 1,
        }
    }
    (copied, dropped)
}

/// `layout` one version newer, byte for byte the same, converted from the current one by
/// a plain copy (see [`crate::Datapath::load_upgrading`]; tests only).
pub(crate) fn bump(layout: &MapLayout) -> MapLayout {
    let conversion = Conversion {
        from: layout.current,
        convert: same_bytes,
    };
    MapLayout {
        current: Layout {
            version: layout.current.version + 1,
            ..layout.current
        },
        // One small allocation per bumped map per run, in tests.
        conversions: Box::leak(Box::new([conversion])),
        ..*layout
    }
}

fn same_bytes(old_key: &[u8], old_value: &[u8], key: &mut [u8], value: &mut [u8]) -> bool {
    if old_key.len() != key.len() || old_value.len() != value.len() {
        return false;
    }
    key.copy_from_slice(old_key);
    value.copy_from_slice(old_value);
    true
}

/// The kernel's description of a map.
pub(crate) fn shape_of(data: &MapData) -> Option<MapShape> {
    let info = data.info().ok()?;
    Some(MapShape {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

pub(crate) fn fd(data: &MapData) -> BorrowedFd<'_> {
    data.fd().as_fd()
}

/// The element commands of bpf(2), on raw bytes: aya's typed maps need the key and value
/// types at compile time, and a migration handles layouts by their sizes.
mod raw {
    use super::*;

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    pub(super) const ANY: u64 = 0;
    pub(super) const NOEXIST: u64 = 1;

    /// The element commands' part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
        value: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_long, attr: &ElemAttr) -> std::io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix for the element commands, its size
        // passed with it; the pointers in it point at buffers the callers sized to the
        // map's key and value sizes, which outlive this call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The key after `key` (`None`: the first) into `next`; false at the end.
    pub(super) fn next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> bool {
        let attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key.map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        call(BPF_MAP_GET_NEXT_KEY, &attr).is_ok()
    }

    pub(super) fn lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> bool {
        let attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        call(BPF_MAP_LOOKUP_ELEM, &attr).is_ok()
    }

    pub(super) fn update(
        map: BorrowedFd<'_>,
        key: &[u8],
        value: &[u8],
        flags: u64,
    ) -> std::io::Result<()> {
        let attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
        };
        call(BPF_MAP_UPDATE_ELEM, &attr)
    }
}

#[cfg(test)]
mod tests {
    use twill_abi::layout::{CONNTRACK_V1, layout_of};

    use super::*;

    fn shape(map_type: u32, l: &Layout, max_entries: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: l.key_size,
            value_size: l.value_size,
            max_entries,
        }
    }

    fn conntrack() -> (&'static MapLayout, MapShape) {
        let l = layout_of(maps::CONNTRACK).unwrap();
        (l, shape(LRU_HASH, &l.current, 1000))
    }

    #[test]
    fn what_to_do_with_a_pinned_map() {
        let (ct, want) = conntrack();
        let v1 = shape(LRU_HASH, &CONNTRACK_V1, 1000);
        let migrate = |from, convert| Plan::Migrate {
            from,
            convert,
            why: String::new(),
        };
        let cases: &[(&str, Option<MapShape>, Recorded, Plan)] = &[
            ("nothing pinned", None, Recorded::NoRecord, Plan::Create),
            ("same", Some(want), Recorded::Version(2), Plan::Reuse),
            (
                "before the record, same sizes",
                Some(want),
                Recorded::NoRecord,
                Plan::Reuse,
            ),
            (
                "recorded older, convertible",
                Some(v1),
                Recorded::Version(1),
                migrate(1, true),
            ),
            (
                "before the record, old sizes",
                Some(v1),
                Recorded::NoRecord,
                migrate(1, true),
            ),
            (
                "other capacity: copied as is",
                Some(MapShape {
                    max_entries: 50,
                    ..want
                }),
                Recorded::Version(2),
                migrate(2, false),
            ),
            (
                "recorded v1 but v2's sizes: never read as v1",
                Some(want),
                Recorded::Version(1),
                Plan::Reset { why: String::new() },
            ),
            (
                "newer than this build",
                Some(want),
                Recorded::Version(3),
                Plan::Reset { why: String::new() },
            ),
            (
                "record without this map",
                Some(want),
                Recorded::Missing,
                Plan::Reset { why: String::new() },
            ),
            (
                "unknown sizes",
                Some(MapShape {
                    value_size: 24,
                    ..want
                }),
                Recorded::NoRecord,
                Plan::Reset { why: String::new() },
            ),
            (
                "sizes disagree with the recorded version",
                Some(MapShape {
                    value_size: 24,
                    ..want
                }),
                Recorded::Version(2),
                Plan::Reset { why: String::new() },
            ),
            (
                "another map type",
                Some(MapShape {
                    map_type: HASH,
                    ..want
                }),
                Recorded::Version(2),
                Plan::Reset { why: String::new() },
            ),
        ];
        for (case, pinned, recorded, expected) in cases {
            let got = plan(ct, want, *pinned, *recorded);
            // The reasons are for people; the kind of action and its source version are
            // the decision.
            let kind = |p: &Plan| match p {
                Plan::Migrate { from, convert, .. } => format!("migrate {from} {convert}"),
                Plan::Reset { .. } => "reset".into(),
                other => format!("{other:?}"),
            };
            assert_eq!(kind(&got), kind(expected), "{case}: {got:?}");
        }
    }

    #[test]
    fn a_map_without_a_conversion_is_reset_and_says_why() {
        let ep = layout_of(maps::POLICY_ENDPOINTS).unwrap();
        let want = shape(HASH, &ep.current, 65536);
        let pinned = MapShape {
            value_size: 8,
            ..want
        };
        let got = plan(ep, want, Some(pinned), Recorded::Version(1));
        assert!(
            matches!(&got, Plan::Reset { why } if why.contains("8 bytes") || why.contains("/8")),
            "{got:?}"
        );
        let bumped = MapLayout {
            current: Layout {
                version: 2,
                ..ep.current
            },
            ..*ep
        };
        let got = plan(&bumped, want, Some(want), Recorded::Version(1));
        assert!(
            matches!(&got, Plan::Reset { why } if why.contains("no conversion")),
            "{got:?}"
        );
    }

    #[test]
    fn a_ring_buffer_of_another_size_is_reset_a_trie_is_copied() {
        let flows = layout_of(maps::FLOWS).unwrap();
        let want = shape(27, &flows.current, 1 << 20);
        let got = plan(
            flows,
            want,
            Some(MapShape {
                max_entries: 1 << 16,
                ..want
            }),
            Recorded::Version(1),
        );
        assert!(matches!(got, Plan::Reset { .. }), "{got:?}");
        let peers = layout_of(maps::POLICY_PEERS).unwrap();
        let want = shape(LPM_TRIE, &peers.current, 1 << 20);
        let got = plan(
            peers,
            want,
            Some(MapShape {
                max_entries: 1 << 10,
                ..want
            }),
            Recorded::Version(1),
        );
        assert!(
            matches!(got, Plan::Migrate { convert: false, .. }),
            "{got:?}"
        );
    }

    #[test]
    fn the_layout_table_matches_the_object() {
        let object = aya_obj::Object::parse(crate::OBJECT).expect("the embedded object parses");
        for l in twill_abi::layout::MAPS {
            let map = object
                .maps
                .get(l.name)
                .unwrap_or_else(|| panic!("{} is not in the object", l.name));
            assert_eq!(
                (map.key_size(), map.value_size()),
                (l.current.key_size, l.current.value_size),
                "{}",
                l.name
            );
        }
        for (name, map) in &object.maps {
            if map.pinning() == aya_obj::maps::PinningType::ByName {
                assert!(
                    twill_abi::layout::layout_of(name).is_some(),
                    "pinned map {name} has no layout in twill_abi::layout::MAPS"
                );
            }
        }
    }
}
