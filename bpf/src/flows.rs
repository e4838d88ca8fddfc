//! Flow records from userspace: the record mode (`TWILL_FLOW_CONF`), the ring they arrive
//! on (`TWILL_FLOWS`), and the count of those the ring had no room for
//! (`TWILL_FLOW_LOST`). See `twill_abi::flow`.

use std::path::Path;

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use twill_abi::{flow::FlowRecord, maps};

use crate::{Datapath, DatapathError, Result};

fn map_error(pin_dir: &Path, name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    let path = pin_dir.join(name);
    move |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    }
}

impl Datapath {
    /// Sets what the programs record (`FLOW_MODE_*`); it applies to the next packet.
    pub fn set_flow_mode(&mut self, mode: u32) -> Result<()> {
        let pin_dir = self.pin_dir.clone();
        let err = map_error(&pin_dir, maps::FLOWS_CONF);
        let map = self.ebpf.map_mut(maps::FLOWS_CONF).ok_or_else(|| {
            err(aya::maps::MapError::InvalidName {
                name: maps::FLOWS_CONF.to_owned(),
            })
        })?;
        let mut conf: Array<&mut MapData, u32> = Array::try_from(map).map_err(&err)?;
        conf.set(0, mode, 0).map_err(err)
    }
}

/// The ring of a node's records. Only one reader should consume it (twilld); each record
/// is read once. Its file descriptor becomes readable when records are waiting (for
/// `tokio::io::unix::AsyncFd`).
pub struct FlowRing(RingBuf<MapData>);

/// Opens a node's ring by its pin.
pub fn open_flow_ring(pin_dir: &Path) -> Result<FlowRing> {
    let err = map_error(pin_dir, maps::FLOWS);
    let data = MapData::from_pin(pin_dir.join(maps::FLOWS)).map_err(&err)?;
    RingBuf::try_from(Map::RingBuf(data))
        .map(FlowRing)
        .map_err(err)
}

impl FlowRing {
    /// The next record, if one is ready: `Some(None)` for a record of another size (a
    /// program of another build), which is skipped.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Option<FlowRecord>> {
        let item = self.0.next()?;
        if item.len() != std::mem::size_of::<FlowRecord>() {
            return Some(None);
        }
        // SAFETY: `item` holds exactly `size_of::<FlowRecord>()` bytes written by the
        // programs as a `FlowRecord` (repr(C), every bit pattern valid); read unaligned.
        let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowRecord>()) };
        Some(Some(record))
    }
}

impl std::os::fd::AsRawFd for FlowRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The records the ring had no room for, summed over CPUs, since the map was created.
pub fn read_flows_lost(pin_dir: &Path) -> Result<u64> {
    let err = map_error(pin_dir, maps::FLOWS_LOST);
    let data = MapData::from_pin(pin_dir.join(maps::FLOWS_LOST)).map_err(&err)?;
    let lost: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(&err)?;
    let values = lost.get(&0, 0).map_err(err)?;
    Ok(values.iter().sum())
}

/// Sets what the programs of the node whose maps are pinned under `pin_dir` record
/// (`FLOW_MODE_*`), from outside the daemon; it applies to the next packet. The daemon
/// goes on reading the ring, and its STATUS keeps the mode it set at start.
pub fn set_flow_mode_pinned(pin_dir: &Path, mode: u32) -> Result<()> {
    let err = map_error(pin_dir, maps::FLOWS_CONF);
    let data = MapData::from_pin(pin_dir.join(maps::FLOWS_CONF)).map_err(&err)?;
    let mut conf: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(&err)?;
    conf.set(0, mode, 0).map_err(err)
}
