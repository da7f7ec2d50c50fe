//! Model-based test: random operations against the store and against an in-memory model
//! (`BTreeMap`s), checking every result, with simulated crashes and reopens in between.
//!
//! Durability rules checked after a crash: every namespace and attribute change survives
//! exactly; a file whose writes were all committed survives byte for byte; a file with
//! uncommitted writes has, at each byte, a value that byte had at some moment since its last
//! commit, and a size it had since then (unacknowledged data may be old or new, never garbage,
//! never a checksum error).
//!
//! Seeded: the seed is printed; replay with `CAIRN_STORE_SEED=<seed>`. `CAIRN_MODEL_STEPS`
//! changes the number of steps.

use std::collections::BTreeMap;

use cairn_store::{CreateHow, FileKind, SetAttributes, Stability, Store, StoreError};
use cairn_types::Fid;

use crate::common::{self, Rng, TEST_CHUNK_BYTES, root};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// Most versions of a file kept since its last commit before the test commits it.
const VERSIONS_MAX: usize = 6;
const FILE_BYTES_MAX: u64 = 3 * TEST_CHUNK_BYTES;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    fid: Fid,
    mode: u32,
    nlink: u32,
    data: Vec<u8>,
    /// File contents at every moment since the last commit (the first is the committed one).
    versions: Vec<Vec<u8>>,
    target: Vec<u8>,
    entries: BTreeMap<Vec<u8>, u64>,
    parent: u64,
}

impl Node {
    fn new(kind: Kind, fid: Fid, mode: u32, parent: u64) -> Node {
        Node {
            kind,
            fid,
            mode,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Vec::new(),
            versions: vec![Vec::new()],
            target: Vec::new(),
            entries: BTreeMap::new(),
            parent,
        }
    }
}

struct Model {
    nodes: BTreeMap<u64, Node>,
    root: u64,
    dead: Vec<Fid>,
}

/// The error kind of a result, for comparing with the model's expectation.
fn outcome<T>(result: &Result<T, StoreError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StoreError::NotFound) => "NotFound",
        Err(StoreError::Exists) => "Exists",
        Err(StoreError::NotDirectory) => "NotDirectory",
        Err(StoreError::IsDirectory) => "IsDirectory",
        Err(StoreError::NotEmpty) => "NotEmpty",
        Err(StoreError::Invalid(_)) => "Invalid",
        Err(StoreError::Stale(_)) => "Stale",
        Err(other) => panic!("unexpected error {other}"),
    }
}

impl Model {
    fn dirs(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, node)| node.kind == Kind::Dir).map(|(&id, _)| id).collect()
    }

    fn files(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, node)| node.kind == Kind::File).map(|(&id, _)| id).collect()
    }

    fn pick(rng: &mut Rng, items: &[u64]) -> Option<u64> {
        (!items.is_empty()).then(|| items[rng.below(items.len() as u64) as usize])
    }

    fn is_ancestor(&self, ancestor: u64, mut node: u64) -> bool {
        loop {
            if node == ancestor {
                return true;
            }
            let parent = self.nodes[&node].parent;
            if parent == node {
                return false;
            }
            node = parent;
        }
    }

    /// Drops a link; removes the node at zero.
    fn unlink(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.kind == Kind::Dir {
            let fid = node.fid;
            self.nodes.remove(&id);
            self.dead.push(fid);
            return;
        }
        node.nlink -= 1;
        if node.nlink == 0 {
            let fid = node.fid;
            self.nodes.remove(&id);
            self.dead.push(fid);
        }
    }

    fn record_version(node: &mut Node) {
        node.versions.push(node.data.clone());
    }
}

fn name(rng: &mut Rng) -> Vec<u8> {
    NAMES[rng.below(NAMES.len() as u64) as usize].as_bytes().to_vec()
}

struct Run {
    dir: tempfile::TempDir,
    store: Option<Store>,
    model: Model,
    rng: Rng,
    step: usize,
    /// Crashes, and files checked after a crash with uncommitted writes.
    crashes: usize,
    uncommitted_checked: usize,
}

impl Run {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn step(&mut self) {
        let choice = self.rng.below(100);
        match choice {
            0..=9 => self.create(),
            10..=14 => self.mkdir(),
            15..=16 => self.symlink(),
            17..=36 => self.write(),
            37..=41 => self.commit(),
            42..=47 => self.truncate(),
            48..=57 => self.read(),
            58..=64 => self.rename(),
            65..=68 => self.link(),
            69..=74 => self.remove(),
            75..=77 => self.rmdir(),
            78..=80 => self.chmod(),
            81..=82 => self.stale(),
            83 => self.crash(),
            84 => self.reopen_clean(),
            _ => self.read(),
        }
        // The volume's used bytes: the model's file sizes (after a crash, the surviving ones).
        let expected: u64 = self
            .model
            .nodes
            .values()
            .filter(|node| matches!(node.kind, Kind::File))
            .map(|node| node.data.len() as u64)
            .sum();
        assert_eq!(self.store().used_bytes(), expected, "step {}: used bytes", self.step);
    }

    fn create(&mut self) {
        let Some(dir) = Model::pick(&mut self.rng, &self.model.dirs()) else { return };
        let name = name(&mut self.rng);
        let dir_fid = self.model.nodes[&dir].fid;
        let result =
            self.store().create(&root(), dir_fid, &name, CreateHow::Guarded(SetAttributes::default()));
        let expected = if self.model.nodes[&dir].entries.contains_key(&name) { "Exists" } else { "ok" };
        assert_eq!(outcome(&result), expected, "step {} create", self.step);
        if let Ok(created) = result {
            let id = created.fid.inode;
            self.model.nodes.insert(id, Node::new(Kind::File, created.fid, 0o644, dir));
            self.model.nodes.get_mut(&dir).expect("dir").entries.insert(name, id);
        }
    }

    fn mkdir(&mut self) {
        let Some(dir) = Model::pick(&mut self.rng, &self.model.dirs()) else { return };
        let name = name(&mut self.rng);
        let dir_fid = self.model.nodes[&dir].fid;
        let result = self.store().mkdir(&root(), dir_fid, &name, SetAttributes::default());
        let expected = if self.model.nodes[&dir].entries.contains_key(&name) { "Exists" } else { "ok" };
        assert_eq!(outcome(&result), expected, "step {} mkdir", self.step);
        if let Ok(created) = result {
            let id = created.fid.inode;
            self.model.nodes.insert(id, Node::new(Kind::Dir, created.fid, 0o755, dir));
            let parent = self.model.nodes.get_mut(&dir).expect("dir");
            parent.entries.insert(name, id);
            parent.nlink += 1;
        }
    }

    fn symlink(&mut self) {
        let Some(dir) = Model::pick(&mut self.rng, &self.model.dirs()) else { return };
        let name = name(&mut self.rng);
        let target = format!("target-{}", self.rng.below(1000)).into_bytes();
        let dir_fid = self.model.nodes[&dir].fid;
        let result = self.store().symlink(&root(), dir_fid, &name, &target, SetAttributes::default());
        let expected = if self.model.nodes[&dir].entries.contains_key(&name) { "Exists" } else { "ok" };
        assert_eq!(outcome(&result), expected, "step {} symlink", self.step);
        if let Ok(created) = result {
            let id = created.fid.inode;
            let mut node = Node::new(Kind::Symlink, created.fid, 0o777, dir);
            node.target = target;
            self.model.nodes.insert(id, node);
            self.model.nodes.get_mut(&dir).expect("dir").entries.insert(name, id);
        }
    }

    fn write(&mut self) {
        let Some(id) = Model::pick(&mut self.rng, &self.model.files()) else { return };
        let offset = match self.rng.below(4) {
            0 => self.rng.below(70_000),
            1 => self.rng.below(FILE_BYTES_MAX),
            2 => self.model.nodes[&id].data.len() as u64,
            _ => (self.rng.below(3) + 1) * TEST_CHUNK_BYTES - self.rng.below(9000),
        };
        let length = match self.rng.below(3) {
            0 => self.rng.below(100) + 1,
            1 => self.rng.below(20_000) + 1,
            _ => self.rng.below(200_000) + 1,
        };
        let length = length.min(FILE_BYTES_MAX.saturating_sub(offset)).max(1);
        let data = self.rng.bytes(length as usize);
        let stability = if self.rng.chance(15) { Stability::FileSync } else { Stability::Unstable };
        let fid = self.model.nodes[&id].fid;
        let result = self.store().write(&root(), fid, offset, &data, stability).expect("write");
        assert_eq!(result.count_bytes as u64, length);
        let node = self.model.nodes.get_mut(&id).expect("file");
        let end = (offset + length) as usize;
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[offset as usize..end].copy_from_slice(&data);
        assert_eq!(result.file.after.expect("after").size_bytes, node.data.len() as u64);
        if stability == Stability::Unstable {
            Model::record_version(node);
        } else {
            node.versions = vec![node.data.clone()];
        }
        if node.versions.len() > VERSIONS_MAX {
            self.store().commit(fid, 0, 0).expect("commit");
            let node = self.model.nodes.get_mut(&id).expect("file");
            node.versions = vec![node.data.clone()];
        }
    }

    fn commit(&mut self) {
        let Some(id) = Model::pick(&mut self.rng, &self.model.files()) else { return };
        let fid = self.model.nodes[&id].fid;
        self.store().commit(fid, 0, 0).expect("commit");
        let node = self.model.nodes.get_mut(&id).expect("file");
        node.versions = vec![node.data.clone()];
    }

    fn truncate(&mut self) {
        let Some(id) = Model::pick(&mut self.rng, &self.model.files()) else { return };
        let current = self.model.nodes[&id].data.len() as u64;
        let size = match self.rng.below(3) {
            0 => self.rng.below(current + 1),
            1 => self.rng.below(FILE_BYTES_MAX),
            _ => self.rng.below(70_000),
        };
        let fid = self.model.nodes[&id].fid;
        let wcc = self
            .store()
            .setattr(&root(), fid, SetAttributes { size_bytes: Some(size), ..Default::default() }, None)
            .expect("truncate");
        assert_eq!(wcc.after.expect("after").size_bytes, size);
        let node = self.model.nodes.get_mut(&id).expect("file");
        node.data.resize(size as usize, 0);
        for version in &mut node.versions {
            // The cut is durable: bytes past it are gone in every possible state.
            version.truncate(size as usize);
        }
        Model::record_version(node);
    }

    fn read(&mut self) {
        let Some(id) = Model::pick(&mut self.rng, &self.model.files()) else { return };
        let node = &self.model.nodes[&id];
        let size = node.data.len() as u64;
        let offset = self.rng.below(size + 10);
        let count = self.rng.below(300_000) as u32;
        let result = self.store().read(&root(), node.fid, offset, count).expect("read");
        let start = (offset as usize).min(node.data.len());
        let end = (offset as usize + count as usize).min(node.data.len());
        assert!(
            result.data == node.data[start..end],
            "step {}: read of inode {id} at {offset} +{count} differs",
            self.step
        );
        assert_eq!(result.eof, offset + u64::from(count) >= size, "step {} eof", self.step);
        assert_eq!(result.attributes.size_bytes, size);
    }

    fn rename(&mut self) {
        let dirs = self.model.dirs();
        let (Some(from), Some(to)) = (Model::pick(&mut self.rng, &dirs), Model::pick(&mut self.rng, &dirs))
        else {
            return;
        };
        let from_name = name(&mut self.rng);
        let to_name = name(&mut self.rng);
        let (from_fid, to_fid) = (self.model.nodes[&from].fid, self.model.nodes[&to].fid);
        let result = self.store().rename(&root(), from_fid, &from_name, to_fid, &to_name);
        // The model's answer, in the store's order of checks.
        let expected = (|| {
            let Some(&source) = self.model.nodes[&from].entries.get(&from_name) else { return "NotFound" };
            let source_dir = self.model.nodes[&source].kind == Kind::Dir;
            if let Some(&target) = self.model.nodes[&to].entries.get(&to_name) {
                if target == source {
                    return "noop";
                }
                let target_node = &self.model.nodes[&target];
                match (source_dir, target_node.kind == Kind::Dir) {
                    (true, false) => return "NotDirectory",
                    (false, true) => return "IsDirectory",
                    (true, true) if !target_node.entries.is_empty() => return "NotEmpty",
                    _ => {}
                }
            }
            if source_dir && from != to && self.model.is_ancestor(source, to) {
                return "Invalid";
            }
            "ok"
        })();
        let got = outcome(&result);
        if expected == "noop" {
            assert_eq!(got, "ok", "step {} rename no-op", self.step);
            return;
        }
        assert_eq!(got, expected, "step {} rename", self.step);
        if got != "ok" {
            return;
        }
        let source =
            self.model.nodes.get_mut(&from).expect("from").entries.remove(&from_name).expect("source");
        let source_dir = self.model.nodes[&source].kind == Kind::Dir;
        if let Some(target) = self.model.nodes.get_mut(&to).expect("to").entries.remove(&to_name) {
            if self.model.nodes[&target].kind == Kind::Dir {
                self.model.nodes.get_mut(&to).expect("to").nlink -= 1;
            }
            self.model.unlink(target);
        }
        self.model.nodes.get_mut(&to).expect("to").entries.insert(to_name, source);
        if source_dir && from != to {
            self.model.nodes.get_mut(&from).expect("from").nlink -= 1;
            self.model.nodes.get_mut(&to).expect("to").nlink += 1;
            self.model.nodes.get_mut(&source).expect("source").parent = to;
        }
    }

    fn link(&mut self) {
        let (Some(file), Some(dir)) =
            (Model::pick(&mut self.rng, &self.model.files()), Model::pick(&mut self.rng, &self.model.dirs()))
        else {
            return;
        };
        let name = name(&mut self.rng);
        let (file_fid, dir_fid) = (self.model.nodes[&file].fid, self.model.nodes[&dir].fid);
        let result = self.store().link(&root(), file_fid, dir_fid, &name);
        let expected = if self.model.nodes[&dir].entries.contains_key(&name) { "Exists" } else { "ok" };
        assert_eq!(outcome(&result), expected, "step {} link", self.step);
        if let Ok(linked) = result {
            self.model.nodes.get_mut(&dir).expect("dir").entries.insert(name, file);
            let node = self.model.nodes.get_mut(&file).expect("file");
            node.nlink += 1;
            assert_eq!(linked.file.nlink, node.nlink);
        }
    }

    fn remove(&mut self) {
        let Some(dir) = Model::pick(&mut self.rng, &self.model.dirs()) else { return };
        let name = name(&mut self.rng);
        let dir_fid = self.model.nodes[&dir].fid;
        let result = self.store().remove(&root(), dir_fid, &name);
        let expected = match self.model.nodes[&dir].entries.get(&name) {
            None => "NotFound",
            Some(id) if self.model.nodes[id].kind == Kind::Dir => "IsDirectory",
            Some(_) => "ok",
        };
        assert_eq!(outcome(&result), expected, "step {} remove", self.step);
        if result.is_ok() {
            let id = self.model.nodes.get_mut(&dir).expect("dir").entries.remove(&name).expect("entry");
            self.model.unlink(id);
        }
    }

    fn rmdir(&mut self) {
        let Some(dir) = Model::pick(&mut self.rng, &self.model.dirs()) else { return };
        let name = name(&mut self.rng);
        let dir_fid = self.model.nodes[&dir].fid;
        let result = self.store().rmdir(&root(), dir_fid, &name);
        let expected = match self.model.nodes[&dir].entries.get(&name) {
            None => "NotFound",
            Some(id) if self.model.nodes[id].kind != Kind::Dir => "NotDirectory",
            Some(id) if !self.model.nodes[id].entries.is_empty() => "NotEmpty",
            Some(_) => "ok",
        };
        assert_eq!(outcome(&result), expected, "step {} rmdir", self.step);
        if result.is_ok() {
            let id = self.model.nodes.get_mut(&dir).expect("dir").entries.remove(&name).expect("entry");
            self.model.unlink(id);
            self.model.nodes.get_mut(&dir).expect("dir").nlink -= 1;
        }
    }

    fn chmod(&mut self) {
        let ids: Vec<u64> = self.model.nodes.keys().copied().collect();
        let Some(id) = Model::pick(&mut self.rng, &ids) else { return };
        let mode = 0o700 | (self.rng.below(0o100) as u32);
        let fid = self.model.nodes[&id].fid;
        self.store()
            .setattr(&root(), fid, SetAttributes { mode: Some(mode), ..Default::default() }, None)
            .expect("chmod");
        self.model.nodes.get_mut(&id).expect("node").mode = mode;
    }

    fn stale(&mut self) {
        if self.model.dead.is_empty() {
            return;
        }
        let fid = self.model.dead[self.rng.below(self.model.dead.len() as u64) as usize];
        assert!(
            matches!(self.store().getattr(fid), Err(StoreError::Stale(_))),
            "step {}: dead fid {fid} alive",
            self.step
        );
        assert!(matches!(
            self.store().write(&root(), fid, 0, b"x", Stability::Unstable),
            Err(StoreError::Stale(_))
        ));
    }

    fn crash(&mut self) {
        let store = self.store.take().expect("store");
        store.simulate_crash();
        self.crashes += 1;
        self.reopen_and_check(true);
    }

    fn reopen_clean(&mut self) {
        let store = self.store.take().expect("store");
        store.sync_all().expect("sync_all");
        drop(store);
        for node in self.model.nodes.values_mut() {
            node.versions = vec![node.data.clone()];
        }
        self.reopen_and_check(false);
    }

    fn reopen_and_check(&mut self, crashed: bool) {
        self.store = Some(Store::open(common::config(self.dir.path())).expect("reopen"));
        let store = self.store.as_ref().expect("store");
        // Walk the model and compare everything.
        let ids: Vec<u64> = self.model.nodes.keys().copied().collect();
        for id in ids {
            let node = self.model.nodes[&id].clone();
            let attributes = store
                .getattr(node.fid)
                .unwrap_or_else(|error| panic!("step {}: inode {id}: {error}", self.step));
            let kind = match node.kind {
                Kind::File => FileKind::Regular,
                Kind::Dir => FileKind::Directory,
                Kind::Symlink => FileKind::Symlink,
            };
            assert_eq!(attributes.kind, kind);
            assert_eq!(attributes.mode, node.mode, "step {} mode of {id}", self.step);
            assert_eq!(attributes.nlink, node.nlink, "step {} nlink of {id}", self.step);
            match node.kind {
                Kind::Dir => {
                    let page = store.readdir(&root(), node.fid, 0, 1000, false).expect("readdir");
                    assert!(page.eof);
                    let listed: BTreeMap<Vec<u8>, u64> = page
                        .entries
                        .iter()
                        .filter(|entry| entry.name != b"." && entry.name != b"..")
                        .map(|entry| (entry.name.clone(), entry.fileid))
                        .collect();
                    assert_eq!(listed, node.entries, "step {}: entries of directory {id}", self.step);
                    assert_eq!(page.entries[1].fileid, node.parent);
                }
                Kind::Symlink => {
                    assert_eq!(store.readlink(&root(), node.fid).expect("readlink").0, node.target)
                }
                Kind::File => {
                    let actual = common::read_all(store, node.fid);
                    if !crashed || node.versions.len() == 1 {
                        assert!(
                            actual == node.data,
                            "step {}: committed file {id} differs (len {} vs {})",
                            self.step,
                            actual.len(),
                            node.data.len()
                        );
                    } else {
                        assert!(
                            node.versions.iter().any(|version| version.len() == actual.len()),
                            "step {}: size {} of file {id} is none of {:?}",
                            self.step,
                            actual.len(),
                            node.versions.iter().map(Vec::len).collect::<Vec<_>>()
                        );
                        for (index, &byte) in actual.iter().enumerate() {
                            let possible = node
                                .versions
                                .iter()
                                .any(|version| version.get(index).copied().unwrap_or(0) == byte);
                            assert!(
                                possible,
                                "step {}: byte {index} of file {id} is {byte}, never written there",
                                self.step
                            );
                        }
                        self.uncommitted_checked += 1;
                        let node = self.model.nodes.get_mut(&id).expect("file");
                        node.data = actual.clone();
                        node.versions = vec![actual];
                    }
                }
            }
        }
        for &fid in &self.model.dead {
            assert!(
                matches!(store.getattr(fid), Err(StoreError::Stale(_))),
                "step {}: dead {fid} came back",
                self.step
            );
        }
    }
}

#[test]
fn model_with_crashes() {
    let seed = common::seed("model_with_crashes");
    let steps: usize =
        std::env::var("CAIRN_MODEL_STEPS").ok().and_then(|value| value.parse().ok()).unwrap_or(1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(common::config(dir.path())).expect("open");
    let root_fid = store.root();
    let mut nodes = BTreeMap::new();
    let mut root_node = Node::new(Kind::Dir, root_fid, 0o755, root_fid.inode);
    root_node.parent = root_fid.inode;
    nodes.insert(root_fid.inode, root_node);
    let mut run = Run {
        dir,
        store: Some(store),
        model: Model { nodes, root: root_fid.inode, dead: Vec::new() },
        rng: Rng(seed),
        step: 0,
        crashes: 0,
        uncommitted_checked: 0,
    };
    let _ = run.model.root;
    for step in 0..steps {
        run.step = step;
        run.step();
    }
    run.crash();
    eprintln!(
        "model_with_crashes: {steps} steps, {} live objects, {} crashes, {} files with uncommitted writes checked",
        run.model.nodes.len(),
        run.crashes,
        run.uncommitted_checked
    );
    assert!(run.crashes > 0);
}
