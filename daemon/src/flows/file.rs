//! The flow file (`flows.file`): one JSON object a line, the same shape `netctl monitor
//! -o json` prints. Before a line would take it past `flows.file_max_bytes` the file is
//! renamed to `<file>.1` (replacing the one before) and a new one begun, so it takes at
//! most twice that on disk.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use twill_api::flow::FlowEvent;

pub struct FlowFile {
    path: PathBuf,
    max_bytes: u64,
    /// `None` after a failure: opened again at the next write.
    out: Option<BufWriter<File>>,
    size: u64,
}

/// The name the file is rotated to.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl FlowFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> FlowFile {
        FlowFile {
            path,
            max_bytes,
            out: None,
            size: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.out = Some(BufWriter::new(file));
        }
        Ok(self.out.as_mut().expect("opened just above"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.size = 0;
        Ok(())
    }

    /// Appends the events and flushes them.
    pub fn write(&mut self, events: &[FlowEvent]) -> io::Result<()> {
        let result = self.write_all(events);
        if result.is_err() {
            self.out = None;
        }
        result
    }

    fn write_all(&mut self, events: &[FlowEvent]) -> io::Result<()> {
        for e in events {
            let mut line = serde_json::to_string(e).map_err(io::Error::other)?;
            line.push('\n');
            self.open()?;
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            self.open()?.write_all(line.as_bytes())?;
            self.size += line.len() as u64;
        }
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_rotated_before_it_outgrows_its_limit() {
        let dir = std::env::temp_dir().join(format!("twill-flowfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("flows.jsonl");
        let event = |seq| FlowEvent {
            seq,
            ..FlowEvent::default()
        };
        let line_len = serde_json::to_string(&event(1)).unwrap().len() as u64 + 1;
        let mut file = FlowFile::new(path.clone(), line_len * 3);
        file.write(&[event(1), event(2)]).unwrap();
        file.write(&[event(3), event(4)]).unwrap();
        let read = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<FlowEvent>(l).unwrap().seq)
                .collect()
        };
        assert_eq!(read(&rotated(&path)), [1, 2, 3]);
        assert_eq!(read(&path), [4]);
        // A new writer (a restarted daemon) appends, and counts what is there.
        let mut again = FlowFile::new(path.clone(), line_len * 3);
        again.write(&[event(5), event(6), event(7)]).unwrap();
        assert_eq!(read(&rotated(&path)), [4, 5, 6]);
        assert_eq!(read(&path), [7]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
