//! Userspace side of twill's dataplane: the eBPF object embedded in this crate, loaded with
//! aya, its programs attached to interfaces and its maps pinned per node and read back.
//!
//! Architecture invariant: this is the only crate that talks to the kernel's BPF
//! interface. Map and program names and layouts come from `twill-abi`.
//!
//! Interfaces are named, and names resolve in the network namespace of the calling
//! thread: call [`Datapath::attach_pod`] from a thread inside the node's namespace.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc,
        tc::{SchedClassifierLink, SchedClassifierLinkId},
    },
};
use twill_abi::{
    layout::MapLayout,
    lb::{
        Affinity, AffinityKey, Backend, BackendKey, Flow, FlowKey, Frontend, FrontendKey, LocalPod,
        MemberKey, NodeConfig, PodSocket, RevNat,
    },
    maps,
    metrics::{Direction, MetricValue, Reason, metric_index},
    programs,
};

/// The eBPF object built from `ebpf/` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twill"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("creating bpffs pin directory {path}")]
    PinDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing the embedded eBPF object")]
    Object {
        #[source]
        source: Box<aya_obj::ParseError>,
    },
    #[error("loading the eBPF object (maps pinned under {pin_dir})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name} is missing from the eBPF object or is not of the expected type")]
    MissingProgram { name: &'static str },
    #[error("kernel rejected program {name}")]
    ProgramLoad {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to interface {interface}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("program link pinned at {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pinning a program link at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("test run of program {name}")]
    TestRun {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("counting this machine's CPUs (for per-CPU map values)")]
    Cpus {
        #[source]
        source: io::Error,
    },
    #[error("map {name} is full ({capacity} entries): raise its size in twilld's configuration")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("map {name} is full ({capacity} entries)")]
    Full { name: &'static str, capacity: u32 },
    #[error("map {name} (at {path})")]
    Map {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

impl DatapathError {
    /// Whether the error is that the interface to attach to does not exist (any more).
    pub fn is_missing_interface(&self) -> bool {
        matches!(
            self,
            Self::Attach { source, .. }
                if matches!(**source, aya::programs::ProgramError::UnknownInterface { .. })
        )
    }
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

pub mod layout;
pub use layout::{MapChange, MapShape, Plan};
mod local;
pub use local::{
    local_backend_pin, monotonic_ns, read_local_backends, remove_local_backend, set_local_backend,
};
mod flows;
pub use flows::{FlowRing, open_flow_ring, read_flows_lost, set_flow_mode_pinned};
mod fqdn;
pub use fqdn::{FqdnMaps, LearnedAddress, fqdn_name, fqdn_name_id, fqdn_name_text, read_fqdn};
mod policy;
pub use policy::{PolicyMaps, TrieKey, read_policy, read_policy_flows};

/// Capacities of the maps an operator may size (`[policy]` in twilld's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `TWILL_POL_PEER`: peer prefixes of every table on the node.
    pub policy_peers: u32,
    /// `TWILL_POL_PORT`: port prefixes of every table on the node.
    pub policy_ports: u32,
    /// `TWILL_FLOWS`: the flow record ring, in bytes (a power of two, at least a page).
    pub flow_ring_bytes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            policy_peers: twill_abi::policy::DEFAULT_PEER_ENTRIES,
            policy_ports: twill_abi::policy::DEFAULT_PORT_ENTRIES,
            flow_ring_bytes: twill_abi::flow::DEFAULT_RING_BYTES,
        }
    }
}

impl MapSizes {
    fn entries(&self) -> [(&'static str, u32); 3] {
        [
            (maps::POLICY_PEERS, self.policy_peers),
            (maps::POLICY_PORTS, self.policy_ports),
            (maps::FLOWS, self.flow_ring_bytes),
        ]
    }
}

/// The loaded programs and maps of one node.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Maps migrated at load whose old map is kept until [`Self::finish_migrations`].
    migrations: Vec<Migration>,
}

/// A map replaced at load, whose entries were carried into the new one.
struct Migration {
    name: &'static str,
    /// The old map: still used by the programs of the earlier run until they are swapped.
    old: MapData,
    /// What the record said of it.
    recorded: layout::Recorded,
    from: MapShape,
    to: MapShape,
    carry: layout::Carry,
}

impl Datapath {
    /// Loads every program in [`OBJECT`] into the kernel. Maps are pinned under `pin_dir`
    /// (created if missing); maps already pinned there are reused, so a restarted daemon
    /// finds its counters and tables as it left them.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        Self::load_with(pin_dir, None)
    }

    /// Like [`Self::load`], telling the programs the service CIDR (address and prefix
    /// length): destinations outside it skip the Service lookups. `None`: any destination
    /// may be a Service.
    pub fn load_with(pin_dir: &Path, service_cidr: Option<([u8; 4], u8)>) -> Result<Self> {
        Self::load_sized(pin_dir, service_cidr, MapSizes::default()).map(|(d, _)| d)
    }

    /// Like [`Self::load_with`], with the configurable maps sized by `sizes`. Maps pinned
    /// by an earlier run are reused, migrated or reset as [`layout::plan`] decides (their
    /// layout version is recorded beside them, in `TWILL_LAYOUT`); the maps migrated or
    /// reset are returned, so the caller can say so and rewrite what was lost. A replaced
    /// map's pin is removed first; programs still attached keep the old map until they are
    /// swapped, and [`Self::finish_migrations`] copies what they added meanwhile.
    pub fn load_sized(
        pin_dir: &Path,
        service_cidr: Option<([u8; 4], u8)>,
        sizes: MapSizes,
    ) -> Result<(Self, Vec<MapChange>)> {
        Self::load_upgrading(pin_dir, service_cidr, sizes, &[])
    }

    /// Like [`Self::load_sized`]; `bumped` names maps whose layout this run treats as one
    /// version newer than this build's, byte for byte the same and converted by a plain
    /// copy. For tests only: it makes the migration of a layout change run on real maps
    /// under real traffic without building an older twilld.
    pub fn load_upgrading(
        pin_dir: &Path,
        service_cidr: Option<([u8; 4], u8)>,
        sizes: MapSizes,
        bumped: &[String],
    ) -> Result<(Self, Vec<MapChange>)> {
        fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDirectory {
            path: pin_dir.to_owned(),
            source,
        })?;
        let object = aya_obj::Object::parse(OBJECT).map_err(|source| DatapathError::Object {
            source: Box::new(source),
        })?;
        let layouts: Vec<MapLayout> = twill_abi::layout::MAPS
            .iter()
            .map(|l| {
                if bumped.iter().any(|b| b == l.name) {
                    layout::bump(l)
                } else {
                    *l
                }
            })
            .collect();
        let mut record = layout::LayoutRecord::open(pin_dir);
        let mut changes = Vec::new();
        let mut migrations: Vec<Migration> = Vec::new();
        // Maps reset: their old map, kept until the load succeeded.
        let mut replaced: Vec<(&'static str, MapData, layout::Recorded)> = Vec::new();
        for l in &layouts {
            let Some(def) = object.maps.get(l.name) else {
                continue;
            };
            let expected = MapShape {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: sizes
                    .entries()
                    .iter()
                    .find(|(name, _)| *name == l.name)
                    .map_or(def.max_entries(), |(_, n)| *n),
            };
            let path = pin_dir.join(l.name);
            let old = MapData::from_pin(&path).ok();
            let pinned = old.as_ref().and_then(layout::shape_of);
            let recorded = record.recorded(l.name);
            let plan = match (&old, pinned) {
                (Some(_), None) => Plan::Reset {
                    why: "the kernel does not describe the pinned map".into(),
                },
                _ => layout::plan(l, expected, pinned, recorded),
            };
            let (Plan::Migrate { .. } | Plan::Reset { .. }, Some(old)) = (&plan, old) else {
                continue;
            };
            record.forget(l.name);
            if let Err(source) = fs::remove_file(&path) {
                record.restore(l.name, recorded);
                restore_pins(pin_dir, &mut record, replaced, migrations);
                return Err(DatapathError::PinDirectory { path, source });
            }
            match (&plan, pinned) {
                (Plan::Migrate { from, convert, .. }, Some(pinned)) => {
                    let carry = match l.conversion_from(*from) {
                        Some(c) if *convert => layout::Carry::Convert(*c),
                        _ => layout::Carry::Copy,
                    };
                    migrations.push(Migration {
                        name: l.name,
                        old,
                        recorded,
                        from: pinned,
                        to: expected,
                        carry,
                    });
                }
                _ => replaced.push((l.name, old, recorded)),
            }
            changes.push(MapChange {
                name: l.name,
                plan,
                copied: 0,
                dropped: 0,
            });
        }
        let ebpf = match load_object(pin_dir, service_cidr, sizes) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                // The earlier run's maps go back where they were, so a failed upgrade
                // leaves its pins as it found them.
                restore_pins(pin_dir, &mut record, replaced, migrations);
                return Err(e);
            }
        };
        drop(replaced);
        for m in &migrations {
            let path = pin_dir.join(m.name);
            let new = MapData::from_pin(&path).map_err(|source| DatapathError::Map {
                name: m.name,
                path: path.clone(),
                source: Box::new(source),
            })?;
            let (copied, dropped) =
                layout::copy_entries(layout::fd(&m.old), m.from, layout::fd(&new), m.to, m.carry);
            if let Some(c) = changes.iter_mut().find(|c| c.name == m.name) {
                c.copied = copied;
                c.dropped = dropped;
            }
        }
        record
            .write_all(pin_dir, &layouts)
            .map_err(|source| DatapathError::Map {
                name: maps::LAYOUT,
                path: pin_dir.join(maps::LAYOUT),
                source: Box::new(source),
            })?;
        Ok((
            Self {
                ebpf,
                pin_dir: pin_dir.to_owned(),
                migrations,
            },
            changes,
        ))
    }

    /// Ends the migrations of [`Self::load_sized`] once every program of this run is
    /// attached: entries the old programs added to the old maps since the load are copied
    /// too (entries already in the new maps are kept), and the old maps are released.
    /// Only maps the programs write get this second pass: the others (Service, policy,
    /// node maps) hold what the daemon wrote to the new map since the load, and copying
    /// the old one again would bring back entries it deleted or values it replaced.
    /// Returns, per migrated map, how many entries this second pass carried.
    pub fn finish_migrations(&mut self) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        for m in std::mem::take(&mut self.migrations) {
            if !layout::datapath_writes(m.to.map_type) {
                continue;
            }
            let Ok(new) = MapData::from_pin(self.pin_dir.join(m.name)) else {
                continue;
            };
            let (copied, _) =
                layout::copy_entries(layout::fd(&m.old), m.from, layout::fd(&new), m.to, m.carry);
            out.push((m.name, copied));
        }
        out
    }

    /// The bpffs directory this datapath's maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the pod programs to the host side of a pod's veth: [`programs::FROM_POD`] on
    /// tc ingress, [`programs::TO_POD`] on tc egress. Equivalent to
    /// `tc filter add dev IF ingress|egress bpf ...` (through tcx on kernels that have it).
    ///
    /// With tcx (kernel 6.6+) the links are pinned under `<pin_dir>/links/`, so they outlive
    /// this process: a restarted daemon finds them and swaps in its own programs atomically
    /// (`bpf_link_update`), and no packet passes untranslated in between. They stay until
    /// [`Self::detach_pod`] or [`Self::forget_pods_except`]. Without tcx the links live as
    /// long as this `Datapath`.
    pub fn attach_pod(&mut self, interface: &str) -> Result<PodAttachment> {
        // tcx needs no qdisc, and adding one would get in the way of other tools' qdiscs
        // (the bandwidth plugin's `ingress`); older kernels need clsact.
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !tcx {
            let _ = tc::qdisc_add_clsact(interface);
        }
        let mut attachment = PodAttachment {
            interface: interface.to_owned(),
            links: Vec::new(),
            pins: Vec::new(),
        };
        // Each new tcx attach waits for an RCU grace period under RTNL (about 10 ms here);
        // that, not twill's own work, is most of a pod's attach time.
        // Replies first: once a request can be translated, so can its reply.
        let [from_pod, to_pod] = programs::POD;
        for (name, attach_type) in [
            (to_pod, TcAttachType::Egress),
            (from_pod, TcAttachType::Ingress),
        ] {
            let done = if tcx {
                let pin = self.link_pin(interface, name);
                self.attach_pinned(&pin, interface, name, attach_type)
                    .map(|pin| attachment.pins.push(pin))
            } else {
                classifier(&mut self.ebpf, name)?
                    .attach(interface, attach_type)
                    .map(|id| attachment.links.push((name, id)))
                    .map_err(|source| attach_error(name, interface, source))
            };
            if let Err(e) = done {
                // Both or neither.
                self.detach_pod(attachment);
                return Err(e);
            }
        }
        Ok(attachment)
    }

    /// Attaches `name` to `interface` through a pinned tcx link: the link pinned by an
    /// earlier run gets this run's program, or a new link is made and pinned.
    fn attach_pinned(
        &mut self,
        pin: &Path,
        interface: &str,
        name: &'static str,
        attach_type: TcAttachType,
    ) -> Result<PathBuf> {
        let pin = pin.to_owned();
        let program = classifier(&mut self.ebpf, name)?;
        let reused = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|pinned| SchedClassifierLink::try_from(FdLink::from(pinned)).ok())
            .and_then(|link| program.attach_to_link(link).ok());
        let id = match reused {
            Some(id) => id,
            None => {
                // Nothing usable pinned (none yet, or a link whose interface is gone).
                let _ = fs::remove_file(&pin);
                program
                    .attach(interface, attach_type)
                    .map_err(|source| attach_error(name, interface, source))?
            }
        };
        let link = program
            .take_link(id)
            .map_err(|source| attach_error(name, interface, source))?;
        if !pin.exists() {
            let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                path: pin.clone(),
                source: Box::new(source),
            })?;
            let dir = pin.parent().unwrap_or(&self.pin_dir).to_owned();
            fs::create_dir_all(&dir)
                .map_err(|source| DatapathError::PinDirectory { path: dir, source })?;
            // Dropping the pinned handle closes our descriptor; the pin keeps the link.
            fd_link.pin(&pin).map_err(|source| DatapathError::Pin {
                path: pin.clone(),
                source: Box::new(source),
            })?;
        }
        // Otherwise the pin already holds the (updated) link; our descriptor closes here.
        Ok(pin)
    }

    /// Attaches [`programs::FROM_OVERLAY`] on tc ingress of the VXLAN device: packets for
    /// this node's pods go straight into them, and NodePort replies from other nodes'
    /// backends go on to their clients. Always on (it is what makes the overlay fast);
    /// needs tcx (kernel 6.6+). The link is pinned under `<pin_dir>/overlay-links/` and
    /// taken over, with this run's program, by the next run.
    pub fn attach_overlay(&mut self, overlay: &str) -> Result<()> {
        let name = programs::FROM_OVERLAY;
        let pin = self.pin_dir.join(OVERLAY_LINKS).join(overlay).join(name);
        self.attach_pinned(&pin, overlay, name, TcAttachType::Ingress)?;
        // Runs before 2026-11-24 pinned it with the NodePort program: that link goes.
        let _ = fs::remove_dir_all(self.pin_dir.join(NODE_LINKS).join(overlay));
        Ok(())
    }

    /// Attaches the NodePort program: [`programs::FROM_WORLD`] on tc ingress of the
    /// underlay interface. Needs tcx (kernel 6.6+); the link is pinned under
    /// `<pin_dir>/node-links/` and taken over, with this run's program, by the next run.
    pub fn attach_node(&mut self, underlay: &str) -> Result<()> {
        let name = programs::FROM_WORLD;
        let pin = self.pin_dir.join(NODE_LINKS).join(underlay).join(name);
        self.attach_pinned(&pin, underlay, name, TcAttachType::Ingress)?;
        Ok(())
    }

    /// Whether an earlier run left the NodePort program attached (its link pinned).
    pub fn node_programs_pinned(&self) -> bool {
        self.pin_dir.join(NODE_LINKS).exists()
    }

    /// Detaches what [`Self::attach_node`] attached: removing the pins releases the links.
    pub fn detach_node(&mut self) {
        let _ = fs::remove_dir_all(self.pin_dir.join(NODE_LINKS));
    }

    /// Tells the programs this node's addresses and the cluster CIDR.
    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<()> {
        let path = self.pin_dir.join(maps::NODE);
        let map = self
            .ebpf
            .map_mut(maps::NODE)
            .ok_or_else(|| DatapathError::Map {
                name: maps::NODE,
                path: path.clone(),
                source: Box::new(aya::maps::MapError::InvalidName {
                    name: maps::NODE.to_owned(),
                }),
            })?;
        let map_error = |source| DatapathError::Map {
            name: maps::NODE,
            path: path.clone(),
            source: Box::new(source),
        };
        let mut array: aya::maps::Array<&mut MapData, NodeConfig> =
            aya::maps::Array::try_from(map).map_err(map_error)?;
        array.set(0, config, 0).map_err(map_error)
    }

    /// `<pin_dir>/links/<interface>/<program>` (bpffs refuses names with dots).
    fn link_pin(&self, interface: &str, program: &str) -> PathBuf {
        self.pin_dir.join(LINKS).join(interface).join(program)
    }

    /// Attaches the socket programs ([`programs::SOCKET`]) to `cgroup`, a cgroup v2
    /// directory: processes in it or below reach Services by socket-level translation
    /// (the backend is chosen once, at `connect`/`sendmsg`). The links are pinned under
    /// `<pin_dir>/cgroup/`, so they outlive this process; the links an earlier run pinned
    /// are released once this run's are attached (for a moment both run; the second finds
    /// the address already translated and leaves it).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let cgroup_error = |source| DatapathError::Cgroup {
            path: cgroup.to_owned(),
            source,
        };
        let file = fs::File::open(cgroup).map_err(cgroup_error)?;
        let dir = self.pin_dir.join(CGROUP_LINKS);
        fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDirectory {
            path: dir.clone(),
            source,
        })?;
        for name in programs::SOCKET {
            let attach_error = |source| DatapathError::Attach {
                program: name,
                interface: format!("cgroup {}", cgroup.display()),
                source: Box::new(source),
            };
            let program = socket_program(&mut self.ebpf, name)?;
            // Through bpf_link_create (kernel 5.7+) cgroup links always allow several
            // programs, and the call takes no flags: `Single` is the one that passes 0.
            let id = program
                .attach(&file, CgroupAttachMode::Single)
                .map_err(attach_error)?;
            let link = program.take_link(id).map_err(attach_error)?;
            let pin = dir.join(name);
            let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                path: pin.clone(),
                source: Box::new(source),
            })?;
            let _ = fs::remove_file(&pin);
            fd_link.pin(&pin).map_err(|source| DatapathError::Pin {
                path: pin.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Detaches what [`Self::attach_pod`] attached. An interface that is already gone took
    /// its attachments with it; that is not an error.
    pub fn detach_pod(&mut self, attachment: PodAttachment) {
        for (name, link) in attachment.links {
            if let Ok(program) = classifier(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
        // The pin is the last reference: removing it releases the link, which detaches.
        for pin in &attachment.pins {
            let _ = fs::remove_file(pin);
        }
        let _ = fs::remove_dir(self.pin_dir.join(LINKS).join(&attachment.interface));
    }

    /// Whether pod links are pinned (tcx, kernel 6.6+): only then can an attachment follow
    /// its interface through a rename ([`Self::rename_pod`]).
    pub fn pins_pod_links() -> bool {
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
    }

    /// Follows a rename of the attachment's interface to `interface`: its pins move to
    /// `<pin_dir>/links/<interface>/` (pins left there by an earlier attachment of that
    /// name are released first). The links themselves are tied to the device, not the
    /// name, and stay attached throughout.
    pub fn rename_pod(&mut self, attachment: &mut PodAttachment, interface: &str) -> Result<()> {
        let from = self.pin_dir.join(LINKS).join(&attachment.interface);
        let to = self.pin_dir.join(LINKS).join(interface);
        if !attachment.pins.is_empty() {
            if to.exists() {
                let _ = fs::remove_dir_all(&to);
            }
            fs::rename(&from, &to).map_err(|source| DatapathError::PinDirectory {
                path: to.clone(),
                source,
            })?;
            for pin in &mut attachment.pins {
                if let Some(name) = pin.file_name() {
                    *pin = to.join(name);
                }
            }
        }
        attachment.interface = interface.to_owned();
        Ok(())
    }

    /// The interfaces with pinned pod programs, as an earlier run left them.
    pub fn pinned_pods(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.pin_dir.join(LINKS))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Releases the pinned programs of every interface not in `keep` (pods deleted while
    /// the daemon was down). Returns the interfaces released.
    pub fn forget_pods_except(&mut self, keep: &[String]) -> Vec<String> {
        let gone: Vec<String> = self
            .pinned_pods()
            .into_iter()
            .filter(|i| !keep.contains(i))
            .collect();
        for interface in &gone {
            let _ = fs::remove_dir_all(self.pin_dir.join(LINKS).join(interface));
        }
        gone
    }

    /// Runs a program once on `packet` with `BPF_PROG_TEST_RUN`, without any interface.
    pub fn test_run(&mut self, name: &'static str, packet: &[u8]) -> Result<TestVerdict> {
        // Room for programs that grow the packet (encapsulation, later).
        let mut out = vec![0u8; packet.len() + 256];
        let result = classifier(&mut self.ebpf, name)?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|source| DatapathError::TestRun {
                name,
                source: Box::new(source),
            })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestVerdict {
            action: result.return_value as i32,
            packet: out,
        })
    }

    /// Reads the packet counters, summed over CPUs.
    pub fn metrics(&self) -> Result<Metrics> {
        read_metrics(&self.pin_dir)
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        let path = self.pin_dir.join(name);
        let map = self.ebpf.map_mut(name).ok_or_else(|| DatapathError::Map {
            name,
            path: path.clone(),
            source: Box::new(aya::maps::MapError::InvalidName {
                name: name.to_owned(),
            }),
        })?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            name,
            path,
            source: Box::new(source),
        })
    }

    /// Makes `key` balance over `backends`: the backends are written first, then the
    /// frontend, so a frontend never points at a slot that is not there yet. Slots beyond
    /// the new count are removed afterwards.
    pub fn set_frontend(
        &mut self,
        key: FrontendKey,
        mut frontend: Frontend,
        backends: &[Backend],
    ) -> Result<()> {
        frontend.backend_count = backends.len() as u32;
        let service_id = frontend.service_id;
        let old = match self
            .hash_map::<FrontendKey, Frontend>(maps::SERVICES)?
            .get(&key, 0)
        {
            Ok(f) if f.service_id == service_id => self.backends_of(&f)?,
            _ => Vec::new(),
        };
        let map_err = |name, source| DatapathError::Map {
            name,
            path: PathBuf::new(),
            source: Box::new(source),
        };
        let member = |b: &Backend| MemberKey {
            service_id,
            ip: b.ip,
            port: b.port,
            _pad: 0,
        };
        // Members first (they only widen what affinity may reuse), then slots, then the
        // frontend; what is gone is removed last.
        let mut members = self.hash_map::<MemberKey, u32>(maps::MEMBERS)?;
        for (slot, backend) in backends.iter().enumerate() {
            members
                .insert(member(backend), slot as u32, 0)
                .map_err(|e| map_err(maps::MEMBERS, e))?;
        }
        let mut slots = self.hash_map::<BackendKey, Backend>(maps::BACKENDS)?;
        for (slot, backend) in backends.iter().enumerate() {
            let k = BackendKey {
                service_id,
                slot: slot as u32,
            };
            slots
                .insert(k, backend, 0)
                .map_err(|e| map_err(maps::BACKENDS, e))?;
        }
        self.hash_map::<FrontendKey, Frontend>(maps::SERVICES)?
            .insert(key, frontend, 0)
            .map_err(|e| map_err(maps::SERVICES, e))?;
        let mut slots = self.hash_map::<BackendKey, Backend>(maps::BACKENDS)?;
        for slot in backends.len()..old.len() {
            let _ = slots.remove(&BackendKey {
                service_id,
                slot: slot as u32,
            });
        }
        let mut members = self.hash_map::<MemberKey, u32>(maps::MEMBERS)?;
        for gone in old.iter().filter(|b| !backends.contains(b)) {
            let _ = members.remove(&member(gone));
        }
        Ok(())
    }

    /// Every frontend in the map.
    pub fn frontends(&mut self) -> Result<Vec<(FrontendKey, Frontend)>> {
        let map = self.hash_map::<FrontendKey, Frontend>(maps::SERVICES)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// The backends a frontend's slots hold now, in slot order.
    pub fn backends_of(&mut self, frontend: &Frontend) -> Result<Vec<Backend>> {
        let map = self.hash_map::<BackendKey, Backend>(maps::BACKENDS)?;
        Ok((0..frontend.backend_count)
            .filter_map(|slot| {
                map.get(
                    &BackendKey {
                        service_id: frontend.service_id,
                        slot,
                    },
                    0,
                )
                .ok()
            })
            .collect())
    }

    /// Removes a frontend and then its backend slots.
    pub fn remove_frontend(&mut self, key: &FrontendKey) -> Result<()> {
        let mut frontends = self.hash_map::<FrontendKey, Frontend>(maps::SERVICES)?;
        let Ok(frontend) = frontends.get(key, 0) else {
            return Ok(());
        };
        let _ = frontends.remove(key);
        let gone = self.backends_of(&frontend)?;
        let mut slots = self.hash_map::<BackendKey, Backend>(maps::BACKENDS)?;
        for slot in 0..frontend.backend_count {
            let _ = slots.remove(&BackendKey {
                service_id: frontend.service_id,
                slot,
            });
        }
        let mut members = self.hash_map::<MemberKey, u32>(maps::MEMBERS)?;
        for b in gone {
            let _ = members.remove(&MemberKey {
                service_id: frontend.service_id,
                ip: b.ip,
                port: b.port,
                _pad: 0,
            });
        }
        Ok(())
    }

    /// The flows conntrack holds: client flow -> backend.
    pub fn conntrack(&mut self) -> Result<Vec<(FlowKey, Flow)>> {
        let map = self.hash_map_lru::<FlowKey, Flow>(maps::CONNTRACK)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// The reverse translations: backend-side flow -> frontend.
    pub fn reverse_nat(&mut self) -> Result<Vec<(FlowKey, RevNat)>> {
        let map = self.hash_map_lru::<FlowKey, RevNat>(maps::REVNAT)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// Tells the programs about a pod on this node: the overlay program delivers packets
    /// for `ip` straight into it through its host veth `ifindex` (with `macs`: the pod's,
    /// then the host end's); with `netns_cookie`, the socket programs key the `ClientIP`
    /// affinity of the pod's sockets on `ip`.
    pub fn set_pod(
        &mut self,
        ip: std::net::Ipv4Addr,
        ifindex: u32,
        macs: Option<([u8; 6], [u8; 6])>,
        netns_cookie: Option<u64>,
    ) -> Result<()> {
        let wire = twill_abi::lb::wire_ip(ip.octets());
        let pin_dir = self.pin_dir.clone();
        let map_err = |name: &'static str, source| DatapathError::Map {
            name,
            path: pin_dir.join(name),
            source: Box::new(source),
        };
        if let Some(cookie) = netns_cookie {
            let value = PodSocket { ip: wire, _pad: 0 };
            self.hash_map::<u64, PodSocket>(maps::POD_NETNS)?
                .insert(cookie, value, 0)
                .map_err(|e| map_err(maps::POD_NETNS, e))?;
        }
        let (pod_mac, host_mac) = macs.unwrap_or_default();
        let local = LocalPod {
            ifindex,
            pod_mac,
            host_mac,
        };
        self.hash_map::<u32, LocalPod>(maps::LOCAL_PODS)?
            .insert(wire, local, 0)
            .map_err(|e| map_err(maps::LOCAL_PODS, e))
    }

    /// Forgets the pods whose address is not in `keep` (deleted pods). Returns how many
    /// entries went.
    pub fn forget_pods_not_in(&mut self, keep: &[std::net::Ipv4Addr]) -> Result<usize> {
        let keep: Vec<u32> = keep
            .iter()
            .map(|ip| twill_abi::lb::wire_ip(ip.octets()))
            .collect();
        let mut netns = self.hash_map::<u64, PodSocket>(maps::POD_NETNS)?;
        let gone: Vec<u64> = netns
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, pod)| !keep.contains(&pod.ip))
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in &gone {
            let _ = netns.remove(cookie);
        }
        let mut local = self.hash_map::<u32, LocalPod>(maps::LOCAL_PODS)?;
        let gone_local: Vec<u32> = local
            .keys()
            .filter_map(|k| k.ok())
            .filter(|ip| !keep.contains(ip))
            .collect();
        for ip in &gone_local {
            let _ = local.remove(ip);
        }
        Ok(gone.len() + gone_local.len())
    }

    fn hash_map_lru<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        // aya reads LRU hash maps through the same type as hash maps.
        self.hash_map(name)
    }
}

/// Loads [`OBJECT`] with its maps pinned under `pin_dir` (reused where pinned) and every
/// program verified.
fn load_object(
    pin_dir: &Path,
    service_cidr: Option<([u8; 4], u8)>,
    sizes: MapSizes,
) -> Result<Ebpf> {
    let (net, mask) = match service_cidr {
        None => (0u32, 0u32),
        Some((octets, prefix)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            let net = u32::from_be_bytes(octets) & mask;
            (
                u32::from_ne_bytes(net.to_be_bytes()),
                u32::from_ne_bytes(mask.to_be_bytes()),
            )
        }
    };
    let mut loader = EbpfLoader::new();
    for (name, size) in sizes.entries() {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader
        .default_map_pin_directory(pin_dir)
        .override_global("SERVICE_NET", &net, true)
        .override_global("SERVICE_MASK", &mask, true)
        .load(OBJECT)
        .map_err(|source| DatapathError::Load {
            pin_dir: pin_dir.to_owned(),
            source: Box::new(source),
        })?;
    let load_error = |name, source| DatapathError::ProgramLoad {
        name,
        source: Box::new(source),
    };
    for name in programs::TC {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|e| load_error(name, e))?;
    }
    for name in programs::SOCKET {
        socket_program(&mut ebpf, name)?
            .load()
            .map_err(|e| load_error(name, e))?;
    }
    Ok(ebpf)
}

/// Pins the maps a failed load had replaced back in their places, with their recorded
/// versions.
fn restore_pins(
    pin_dir: &Path,
    record: &mut layout::LayoutRecord,
    replaced: Vec<(&'static str, MapData, layout::Recorded)>,
    migrations: Vec<Migration>,
) {
    let old = replaced
        .into_iter()
        .chain(migrations.into_iter().map(|m| (m.name, m.old, m.recorded)));
    for (name, data, recorded) in old {
        let path = pin_dir.join(name);
        // A map the failed load created in its place goes first.
        let _ = fs::remove_file(&path);
        if data.pin(&path).is_ok() {
            record.restore(name, recorded);
        }
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(DatapathError::MissingProgram { name })
}

/// The programs attached to one pod interface.
#[derive(Debug)]
pub struct PodAttachment {
    pub interface: String,
    /// Links owned by this process (kernels without tcx).
    links: Vec<(&'static str, SchedClassifierLinkId)>,
    /// Pinned tcx links.
    pins: Vec<PathBuf>,
}

/// The subdirectory of a node's pin directory holding the pods' program links.
pub const LINKS: &str = "links";
/// The subdirectory of a node's pin directory holding the NodePort program's link (on the
/// underlay interface; there only while some Service has a NodePort).
pub const NODE_LINKS: &str = "node-links";
/// The subdirectory of a node's pin directory holding the overlay program's link.
pub const OVERLAY_LINKS: &str = "overlay-links";

/// The subdirectory of a node's pin directory holding the socket programs' cgroup links.
pub const CGROUP_LINKS: &str = "cgroup";

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
        .ok_or(DatapathError::MissingProgram { name })
}

fn attach_error(
    program: &'static str,
    interface: &str,
    source: aya::programs::ProgramError,
) -> DatapathError {
    DatapathError::Attach {
        program,
        interface: interface.to_owned(),
        source: Box::new(source),
    }
}

/// What a program did with a packet in a test run.
#[derive(Debug)]
pub struct TestVerdict {
    /// The program's return code (`TC_ACT_*`).
    pub action: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// One counter of the metrics map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricRow {
    pub direction: Direction,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// Every known counter, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub rows: Vec<MetricRow>,
}

impl Metrics {
    /// The counter for one direction and reason.
    pub fn get(&self, direction: Direction, reason: Reason) -> MetricValue {
        self.rows
            .iter()
            .find(|r| r.direction == direction && r.reason == reason)
            .map(|r| MetricValue {
                packets: r.packets,
                bytes: r.bytes,
            })
            .unwrap_or_default()
    }
}

/// Reads the pinned metrics map of a node, e.g. from the CLI, while its daemon runs.
pub fn read_metrics(pin_dir: &Path) -> Result<Metrics> {
    let path = pin_dir.join(maps::METRICS);
    let map_err = |source| DatapathError::Map {
        name: maps::METRICS,
        path: path.clone(),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let array: PerCpuArray<MapData, MetricValue> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err)?;
    let mut rows = Vec::new();
    for direction in Direction::ALL {
        for reason in Reason::ALL {
            let per_cpu = array
                .get(&metric_index(direction, reason), 0)
                .map_err(map_err)?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            rows.push(MetricRow {
                direction,
                reason,
                packets,
                bytes,
            });
        }
    }
    Ok(Metrics { rows })
}

/// Reads every entry of a pinned hash (or LRU hash) map.
fn read_pinned<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let path = pin_dir.join(name);
    let map_err = |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    // aya reads hash and LRU hash maps through one type; the map's own type decides.
    let map = match data.info().map_err(map_err)?.map_type().map_err(map_err)? {
        aya::maps::MapType::LruHash => Map::LruHashMap(data),
        _ => Map::HashMap(data),
    };
    let map: HashMap<MapData, K, V> = HashMap::try_from(map).map_err(map_err)?;
    Ok(map.iter().filter_map(|e| e.ok()).collect())
}

/// A pinned frontend with its backends, for the CLI.
#[derive(Clone, Debug)]
pub struct FrontendEntry {
    pub key: FrontendKey,
    pub frontend: Frontend,
    pub backends: Vec<Backend>,
}

/// Reads a node's pinned Service frontends and their backends.
pub fn read_services(pin_dir: &Path) -> Result<Vec<FrontendEntry>> {
    let frontends: Vec<(FrontendKey, Frontend)> = read_pinned(pin_dir, maps::SERVICES)?;
    let slots: std::collections::HashMap<(u32, u32), Backend> =
        read_pinned::<BackendKey, Backend>(pin_dir, maps::BACKENDS)?
            .into_iter()
            .map(|(k, b)| ((k.service_id, k.slot), b))
            .collect();
    let mut out: Vec<FrontendEntry> = frontends
        .into_iter()
        .map(|(key, frontend)| FrontendEntry {
            backends: (0..frontend.backend_count)
                .filter_map(|slot| slots.get(&(frontend.service_id, slot)).copied())
                .collect(),
            key,
            frontend,
        })
        .collect();
    out.sort_by_key(|e| {
        (
            u32::from_be(e.key.ip),
            u16::from_be(e.key.port),
            e.key.protocol,
        )
    });
    Ok(out)
}

/// Reads a node's pinned pod namespaces: netns cookie -> pod.
pub fn read_pod_netns(pin_dir: &Path) -> Result<Vec<(u64, PodSocket)>> {
    read_pinned(pin_dir, maps::POD_NETNS)
}

/// Reads a node's pinned session affinity entries: (Service, client) -> backend.
pub fn read_affinity(pin_dir: &Path) -> Result<Vec<(AffinityKey, Affinity)>> {
    read_pinned(pin_dir, maps::AFFINITY)
}

/// Reads a node's pinned conntrack entries: client flow -> backend.
pub fn read_conntrack(pin_dir: &Path) -> Result<Vec<(FlowKey, Flow)>> {
    read_pinned(pin_dir, maps::CONNTRACK)
}

/// The maps [`count_pinned`] counts: the hash and LRU maps that the programs or another
/// writer (`twill-dnsd`) fill, so no userspace bookkeeping knows how full they are.
pub const COUNTED_MAPS: [&str; 10] = [
    maps::CONNTRACK,
    maps::REVNAT,
    maps::AFFINITY,
    maps::SOCK_NAT,
    maps::POLICY_FLOWS,
    maps::LOCAL_PODS,
    maps::POD_NETNS,
    maps::DNS_LOCAL,
    maps::FQDN_ALLOWS,
    maps::FQDN_NAMES,
];

/// How many entries one of [`COUNTED_MAPS`] pinned under `pin_dir` holds, and its
/// capacity. Walks the keys, one syscall per entry, so callers bound how often they ask.
/// Under churn the count is approximate: a key deleted while the walk stands on it
/// restarts the kernel's walk, so the count is capped at the capacity.
pub fn count_pinned(pin_dir: &Path, name: &'static str) -> Result<(u64, u32)> {
    use twill_abi::{
        lb::{LocalBackend, SockKey},
        policy::{FqdnAllow, FqdnKey, FqdnName, PolicyFlow, PolicyFlowKey},
    };
    match name {
        maps::CONNTRACK => count_keys::<FlowKey, Flow>(pin_dir, maps::CONNTRACK),
        maps::REVNAT => count_keys::<FlowKey, RevNat>(pin_dir, maps::REVNAT),
        maps::AFFINITY => count_keys::<AffinityKey, Affinity>(pin_dir, maps::AFFINITY),
        maps::SOCK_NAT => count_keys::<SockKey, RevNat>(pin_dir, maps::SOCK_NAT),
        maps::POLICY_FLOWS => count_keys::<PolicyFlowKey, PolicyFlow>(pin_dir, maps::POLICY_FLOWS),
        maps::LOCAL_PODS => count_keys::<u32, LocalPod>(pin_dir, maps::LOCAL_PODS),
        maps::POD_NETNS => count_keys::<u64, PodSocket>(pin_dir, maps::POD_NETNS),
        maps::DNS_LOCAL => count_keys::<FrontendKey, LocalBackend>(pin_dir, maps::DNS_LOCAL),
        maps::FQDN_ALLOWS => count_keys::<FqdnKey, FqdnAllow>(pin_dir, maps::FQDN_ALLOWS),
        maps::FQDN_NAMES => count_keys::<u64, FqdnName>(pin_dir, maps::FQDN_NAMES),
        _ => Err(DatapathError::Map {
            name,
            path: pin_dir.join(name),
            source: Box::new(aya::maps::MapError::InvalidName {
                name: name.to_owned(),
            }),
        }),
    }
}

fn count_keys<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<(u64, u32)> {
    let path = pin_dir.join(name);
    let map_err = |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let info = data.info().map_err(map_err)?;
    let capacity = info.max_entries();
    let map = match info.map_type().map_err(map_err)? {
        aya::maps::MapType::LruHash => Map::LruHashMap(data),
        _ => Map::HashMap(data),
    };
    let map: HashMap<MapData, K, V> = HashMap::try_from(map).map_err(map_err)?;
    let entries = map
        .keys()
        .take(capacity as usize)
        .take_while(std::result::Result::is_ok)
        .count();
    Ok((entries as u64, capacity))
}
