//! The lab itself: what `up` makes works, and `down`, a panic or a refused spec leave
//! nothing behind.

use std::{panic, path::Path};

use twill_lab::{Lab, LabError, LabSpec, STATE_ROOT, plan::GATEWAY};
use twill_netns::NetNs;
use twill_tests::{alive, leftovers, require_root};

#[test]
fn up_builds_every_part_and_down_removes_every_part() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 1)).expect("lab up");
    let manifest = lab.manifest().clone();

    // Every namespace exists, etcd runs inside the underlay namespace, each node has its
    // cgroup and bpffs directory.
    let namespaces = NetNs::list().unwrap();
    for ns in manifest.plan.namespaces() {
        assert!(namespaces.iter().any(|n| n == ns), "netns {ns} missing");
    }
    let etcd = manifest.etcd.expect("etcd recorded");
    assert!(alive(etcd.pid));
    assert!(lab.underlay().unwrap().pids().unwrap().contains(&etcd.pid));
    for node in lab.nodes() {
        assert!(
            twill_lab::resources::is_cgroup2(&node.cgroup_dir),
            "{node:?}"
        );
        assert!(node.bpffs_dir.is_dir(), "{node:?}");
    }

    // Hosts are on one LAN: every host reaches every other and the gateway.
    let hosts: Vec<_> = lab.nodes().into_iter().chain(lab.externals()).collect();
    assert_eq!(hosts.len(), 3);
    for from in &hosts {
        let mut targets: Vec<String> = hosts
            .iter()
            .filter(|h| h.name() != from.name())
            .map(|h| h.plan.underlay_ip.to_string())
            .collect();
        targets.push(GATEWAY.to_string());
        for to in targets {
            let out = from.output("ping", &["-c", "1", "-W", "2", &to]).unwrap();
            assert!(out.status.success(), "{} cannot reach {to}", from.name());
        }
    }
    // A process started on a node lands in that node's cgroup.
    let node = &lab.nodes()[0];
    let mut sleeper = std::process::Command::new("sleep");
    sleeper.arg("30");
    let mut child = node.spawn(sleeper).unwrap();
    let procs = std::fs::read_to_string(node.cgroup_dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == child.id().to_string()),
        "{procs}"
    );

    // External hosts have no cgroup; their processes run all the same.
    let mut noop = std::process::Command::new("true");
    noop.stdout(std::process::Stdio::null());
    let ext = &lab.externals()[0];
    assert!(ext.spawn(noop).unwrap().wait().unwrap().success());

    lab.down().expect("lab down");
    assert!(
        !child.wait().unwrap().success(),
        "teardown stops the node's processes"
    );
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}

#[test]
fn a_test_that_panics_still_removes_its_lab() {
    require_root();
    let spec = LabSpec::for_test(1, 0);
    let state_dir = Path::new(STATE_ROOT).join(&spec.name);
    let manifest = panic::catch_unwind(|| {
        let lab = Lab::up(&spec).expect("lab up");
        panic::panic_any(lab.manifest().clone());
    })
    .expect_err("the closure panics")
    .downcast::<twill_lab::Manifest>()
    .expect("the panic carries the manifest");
    assert_eq!(manifest.state_dir, state_dir);
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}

#[test]
fn two_labs_run_side_by_side_without_seeing_each_other() {
    require_root();
    let a = Lab::up(&LabSpec::for_test(1, 0)).expect("lab a");
    let b = Lab::up(&LabSpec::for_test(1, 0)).expect("lab b");
    // Same addresses, different namespaces: both work.
    for lab in [&a, &b] {
        let node = &lab.nodes()[0];
        let out = node
            .output("ping", &["-c", "1", "-W", "2", &GATEWAY.to_string()])
            .unwrap();
        assert!(
            out.status.success(),
            "{} cannot reach its gateway",
            lab.name()
        );
    }
    assert_ne!(a.name(), b.name());
    let (ma, mb) = (a.manifest().clone(), b.manifest().clone());
    a.down().unwrap();
    // Taking one down leaves the other intact.
    assert_eq!(leftovers(&ma), Vec::<String>::new());
    assert!(alive(mb.etcd.unwrap().pid));
    b.down().unwrap();
    assert_eq!(leftovers(&mb), Vec::<String>::new());
}

#[test]
fn a_refused_spec_names_the_problem_and_makes_nothing() {
    require_root();
    let bad = LabSpec {
        name: "Bad Name".to_owned(),
        nodes: 1,
        externals: 0,
        persistent: false,
        etcd_tls: false,
        second_subnet: 0,
    };
    let err = Lab::up(&bad).unwrap_err();
    assert!(matches!(err, LabError::Plan(_)), "{err:?}");
    assert!(err.to_string().contains("\"Bad Name\""), "{err}");

    let zero = LabSpec {
        nodes: 0,
        ..LabSpec::for_test(1, 0)
    };
    let err = Lab::up(&zero).unwrap_err();
    assert!(err.to_string().contains("between 1 and 89 nodes"), "{err}");
    assert!(!Path::new(STATE_ROOT).join(&zero.name).exists());

    // A second lab of the same name is refused and the first is untouched.
    let lab = Lab::up(&LabSpec::for_test(1, 0)).unwrap();
    let manifest = lab.manifest().clone();
    let again = LabSpec {
        name: lab.name().to_owned(),
        ..LabSpec::for_test(1, 0)
    };
    let err = Lab::up(&again).unwrap_err();
    assert!(matches!(err, LabError::Exists { .. }), "{err:?}");
    assert!(alive(lab.manifest().etcd.unwrap().pid));
    lab.down().unwrap();
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
    // Other tests make namespaces at the same time: look only for this test's names.
    let ours: Vec<_> = NetNs::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.contains("Bad") || n.contains(&zero.name))
        .collect();
    assert!(
        ours.is_empty(),
        "namespaces made for refused specs: {ours:?}"
    );
}

#[test]
fn namespaces_made_by_ip_netns_meanwhile_do_not_hide_the_labs() {
    require_root();
    // `ip netns add` makes /run/netns a shared bind mount of itself; the lab's namespaces
    // must stay removable whatever order the two happen in.
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let other = format!("{}-by-ip", lab.manifest().plan.resource_dir);
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["netns", "add", &other]);
    let pod = lab.create_netns("pod1").expect("a lab-owned namespace");
    assert!(pod.path().exists());
    ip(&["netns", "delete", &other]);
    let manifest = lab.manifest().clone();
    assert!(manifest.namespaces().contains(&pod.name().unwrap()));
    lab.down().expect("lab down");
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}

#[test]
fn a_lab_found_by_name_survives_the_value_being_dropped() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let name = lab.name().to_owned();
    {
        let mut attached = Lab::attach(&name).expect("attach");
        attached.create_netns("pod1").expect("a pod namespace");
    } // dropped here: must not take the lab down
    let manifest = twill_lab::Manifest::load(&name).expect("the lab is still there");
    assert!(alive(manifest.etcd.unwrap().pid));
    assert_eq!(manifest.extra_namespaces.len(), 1);
    // The first value still owns the lab and removes it, pod namespace included.
    drop(lab);
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}

#[test]
fn every_namespace_has_its_own_cookie_and_code_inside_sees_it() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].netns().unwrap();
    let pod = lab.create_netns("cookie").unwrap();
    let (node_cookie, pod_cookie) = (node.cookie().unwrap(), pod.cookie().unwrap());
    assert_ne!(node_cookie, pod_cookie);
    assert_ne!(pod_cookie, 0);
    let inside = pod.run(twill_netns::current_cookie).unwrap().unwrap();
    assert_eq!(inside, pod_cookie, "what the eBPF socket programs will see");
}
