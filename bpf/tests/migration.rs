//! The conversion of a real earlier layout on kernel maps (root): a conntrack map pinned
//! by a twilld from before NodePort (16-byte values, no layout record) is migrated by the
//! next load into this build's layout, its entries converted, and reused after that.

use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData};
use twill_abi::{
    layout::CONNTRACK_V1,
    lb::{Flow, FlowKey, IPPROTO_TCP, wire_ip, wire_port},
    maps,
};
use twill_bpf::{Datapath, MapSizes, Plan};

/// A pin directory of this test's own on the machine's bpffs, removed when dropped.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_conntrack_map_of_the_layout_before_nodeport_is_converted_on_load() {
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/twill-migration-test-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("this test needs root (bpffs)");

    // BPF_MAP_TYPE_LRU_HASH, as the programs declare it, with version 1's sizes.
    let def =
        aya_obj::Map::new_from_params(9, CONNTRACK_V1.key_size, CONNTRACK_V1.value_size, 1024, 0);
    let old = MapData::create(def, maps::CONNTRACK, None).expect("create a map");
    old.pin(dir.0.join(maps::CONNTRACK)).expect("pin it");
    let mut old: HashMap<MapData, FlowKey, [u8; 16]> =
        HashMap::try_from(Map::LruHashMap(old)).expect("a hash map");
    let key = FlowKey {
        src_ip: wire_ip([10, 244, 0, 2]),
        dst_ip: wire_ip([10, 96, 0, 90]),
        src_port: wire_port(40000),
        dst_port: wire_port(80),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // Backend 10.244.1.2:8080, pad, frontend 10.96.0.90:80, pad (garbage in the pads).
    let mut v1 = [0u8; 16];
    v1[0..4].copy_from_slice(&[10, 244, 1, 2]);
    v1[4..6].copy_from_slice(&8080u16.to_be_bytes());
    v1[6..8].copy_from_slice(&[0xff, 0xff]);
    v1[8..12].copy_from_slice(&[10, 96, 0, 90]);
    v1[12..14].copy_from_slice(&80u16.to_be_bytes());
    v1[14..16].copy_from_slice(&[0xaa, 0xbb]);
    old.insert(key, v1, 0).expect("an old flow");
    drop(old);

    let (datapath, changes) =
        Datapath::load_sized(&dir.0, None, MapSizes::default()).expect("programs load");
    drop(datapath);
    let change = changes
        .iter()
        .find(|c| c.name == maps::CONNTRACK)
        .unwrap_or_else(|| panic!("conntrack migrated: {changes:?}"));
    assert!(
        matches!(
            change.plan,
            Plan::Migrate {
                from: 1,
                convert: true,
                ..
            }
        ),
        "{change:?}"
    );
    assert_eq!((change.copied, change.dropped), (1, 0), "{change}");
    assert_eq!(changes.len(), 1, "only conntrack changed: {changes:?}");

    let flows = twill_bpf::read_conntrack(&dir.0).expect("read the new map");
    assert_eq!(
        flows,
        vec![(
            key,
            Flow {
                backend_ip: wire_ip([10, 244, 1, 2]),
                backend_port: wire_port(8080),
                flags: 0,
                frontend_ip: wire_ip([10, 96, 0, 90]),
                frontend_port: wire_port(80),
                snat_port: 0,
                snat_ip: 0,
            }
        )]
    );

    // Recorded now: the next load reuses every map, the flow still there.
    let (_datapath, changes) =
        Datapath::load_sized(&dir.0, None, MapSizes::default()).expect("programs load again");
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(twill_bpf::read_conntrack(&dir.0).unwrap().len(), 1);
}
