//! Coupled structures, discovered from a model's channel graph (LLM-Pruner §3.1).
//!
//! A model is described as *spaces* (the channels an operation reads or writes, split into
//! units: single channels, or attention heads that RoPE and the head reshape keep whole) and
//! the couplings its operations impose between them: an element-wise operation (a norm, an
//! activation, a product, a residual add) makes unit `i` of each operand the same neuron, so
//! a neuron whose only input is pruned loses its output and a neuron whose only consumer is
//! pruned loses its reason to exist; GQA's `repeat_kv` ties a KV head to its query heads. A
//! dense linear layer couples nothing: each output mixes every input. Parameters attach to
//! spaces along one axis. Pruning a unit of one space forces the units it is coupled to,
//! transitively; the connected spaces are a group, and its coarsest space is the root whose
//! units are pruned together with everything they reach.

mod llama;

pub use llama::{llama_graph, query_head_group, structure, Fusion, Structure};

use serde::Serialize;

pub type SpaceId = usize;

/// An index space of prunable units, each `unit_width` consecutive channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Space {
    pub name: String,
    pub units: usize,
    pub unit_width: usize,
}

/// Along which axis of a parameter a space's channels lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Axis {
    /// Rows of a `[out, in]` weight: the outputs of a linear layer (and its bias).
    Rows,
    /// Columns of a `[out, in]` weight, or of an embedding `[V, H]`.
    Cols,
    /// The elements of a vector (norm weights, biases).
    Elements,
}

/// A parameter's channels along `axis`, from `offset` on, belong to `space` (offsets describe
/// fused weights such as Phi-3's `qkv_proj`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub param: String,
    pub axis: Axis,
    pub space: SpaceId,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy)]
enum Coupling {
    /// Unit `i` of one is unit `i` of the other.
    Same(SpaceId, SpaceId),
    /// KV unit `j` feeds query units `j·rep .. (j+1)·rep`.
    Expand { kv: SpaceId, q: SpaceId, rep: usize },
}

impl Coupling {
    /// The two spaces it ties.
    fn ends(self) -> (SpaceId, SpaceId) {
        match self {
            Coupling::Same(a, b) => (a, b),
            Coupling::Expand { kv, q, .. } => (kv, q),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("`{a}` ({a_units} units) and `{b}` ({b_units} units) are coupled element-wise but differ in size")]
    SizeMismatch { a: String, a_units: usize, b: String, b_units: usize },
    #[error("`{kv}` ({kv_units} units) cannot feed `{q}` ({q_units} units) {rep} times each")]
    BadExpand { kv: String, kv_units: usize, q: String, q_units: usize, rep: usize },
    #[error("unit {unit} of `{space}` is coupled to two different units of the group's root `{root}`; it cannot be pruned alone")]
    Overlap { space: String, unit: usize, root: String },
    #[error("unit {unit} of `{space}` follows no unit of the group's root `{root}`")]
    Unreached { space: String, unit: usize, root: String },
}

/// The operations of a model at the level of channels.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    spaces: Vec<Space>,
    couplings: Vec<Coupling>,
    attachments: Vec<Attachment>,
}

/// What pruning one root unit removes from one parameter: `channels[u]` are the indices along
/// `axis` that go with root unit `u`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    pub param: String,
    pub axis: Axis,
    pub channels: Vec<Vec<usize>>,
}

/// A coupled structure: its root space's units are the things that are scored and pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub root: String,
    pub units: usize,
    /// Channels per root unit (the head dimension for heads, 1 for neurons and hidden channels).
    pub unit_width: usize,
    /// Every space of the group, by name.
    pub spaces: Vec<String>,
    pub members: Vec<GroupMember>,
}

impl Graph {
    pub fn space(&mut self, name: impl Into<String>, units: usize, unit_width: usize) -> SpaceId {
        self.spaces.push(Space { name: name.into(), units, unit_width });
        self.spaces.len() - 1
    }

    pub fn attach(&mut self, param: impl Into<String>, axis: Axis, space: SpaceId, offset: usize) {
        self.attachments.push(Attachment { param: param.into(), axis, space, offset });
    }

    /// An element-wise operation over `spaces` (inputs and output): they are one set of neurons.
    pub fn elementwise(&mut self, spaces: &[SpaceId]) {
        for pair in spaces.windows(2) {
            self.couplings.push(Coupling::Same(pair[0], pair[1]));
        }
    }

    /// GQA's `repeat_kv`: KV unit `j` is read by query units `j·rep .. (j+1)·rep`.
    pub fn expand(&mut self, kv: SpaceId, q: SpaceId, rep: usize) {
        self.couplings.push(Coupling::Expand { kv, q, rep });
    }

    pub fn spaces(&self) -> &[Space] {
        &self.spaces
    }

    /// The coupled groups, in the order of their first space. Each root is the group's space
    /// with the fewest units (the first such); every unit of every space of the group must
    /// follow exactly one root unit.
    pub fn groups(&self) -> Result<Vec<Group>, GraphError> {
        self.check_sizes()?;
        let n = self.spaces.len();
        let mut neighbours: Vec<Vec<Coupling>> = vec![Vec::new(); n];
        for &c in &self.couplings {
            let (a, b) = c.ends();
            neighbours[a].push(c);
            neighbours[b].push(c);
        }
        let mut visited = vec![false; n];
        let mut groups = Vec::new();
        for start in 0..n {
            if visited[start] {
                continue;
            }
            let mut members = vec![start];
            visited[start] = true;
            let mut i = 0;
            while i < members.len() {
                for c in &neighbours[members[i]] {
                    let (a, b) = c.ends();
                    for s in [a, b] {
                        if !visited[s] {
                            visited[s] = true;
                            members.push(s);
                        }
                    }
                }
                i += 1;
            }
            members.sort_unstable();
            groups.push(self.group(&members, &neighbours)?);
        }
        Ok(groups)
    }

    fn check_sizes(&self) -> Result<(), GraphError> {
        for &c in &self.couplings {
            match c {
                Coupling::Same(a, b) if self.spaces[a].units != self.spaces[b].units => {
                    let (a, b) = (&self.spaces[a], &self.spaces[b]);
                    return Err(GraphError::SizeMismatch { a: a.name.clone(), a_units: a.units, b: b.name.clone(), b_units: b.units });
                }
                Coupling::Expand { kv, q, rep } if rep == 0 || self.spaces[kv].units * rep != self.spaces[q].units => {
                    let (kv, q) = (&self.spaces[kv], &self.spaces[q]);
                    return Err(GraphError::BadExpand { kv: kv.name.clone(), kv_units: kv.units, q: q.name.clone(), q_units: q.units, rep });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Labels every unit of the component's spaces with the root unit it follows.
    fn group(&self, spaces: &[SpaceId], neighbours: &[Vec<Coupling>]) -> Result<Group, GraphError> {
        let root = *spaces.iter().min_by_key(|&&s| (self.spaces[s].units, s)).unwrap_or(&spaces[0]);
        let mut label: Vec<Vec<Option<usize>>> = self.spaces.iter().map(|_| Vec::new()).collect();
        for &s in spaces {
            label[s] = vec![None; self.spaces[s].units];
        }
        for r in 0..self.spaces[root].units {
            let mut stack = vec![(root, r)];
            while let Some((s, u)) = stack.pop() {
                match label[s][u] {
                    Some(l) if l == r => continue,
                    Some(_) => return Err(GraphError::Overlap { space: self.spaces[s].name.clone(), unit: u, root: self.spaces[root].name.clone() }),
                    None => label[s][u] = Some(r),
                }
                for c in &neighbours[s] {
                    match *c {
                        Coupling::Same(a, b) => stack.push((if a == s { b } else { a }, u)),
                        Coupling::Expand { kv, q, rep } if s == kv => stack.extend((0..rep).map(|i| (q, u * rep + i))),
                        Coupling::Expand { kv, rep, .. } => stack.push((kv, u / rep)),
                    }
                }
            }
        }
        let mut members: Vec<GroupMember> = Vec::new();
        for a in self.attachments.iter().filter(|a| spaces.contains(&a.space)) {
            let space = &self.spaces[a.space];
            let mut channels = vec![Vec::new(); self.spaces[root].units];
            for (u, l) in label[a.space].iter().enumerate() {
                let l = l.ok_or_else(|| GraphError::Unreached { space: space.name.clone(), unit: u, root: self.spaces[root].name.clone() })?;
                let first = a.offset + u * space.unit_width;
                channels[l].extend(first..first + space.unit_width);
            }
            // A parameter attached twice (a tied embedding and head) is one member, sliced
            // once. (The reference scores a tied embedding twice, as embedding and as head,
            // which weighs it double in `sum`; a difference for channel-wise pruning only.)
            match members.iter_mut().find(|m| m.param == a.param && m.axis == a.axis) {
                Some(m) if m.channels == channels => {}
                Some(m) => m.channels.iter_mut().zip(channels).for_each(|(c, extra)| c.extend(extra)),
                None => members.push(GroupMember { param: a.param.clone(), axis: a.axis, channels }),
            }
        }
        // The root's own parameters first, so that a "first member" reduction means the root.
        // (For hidden channels that is the embedding; the reference roots them at the first
        // RMSNorm.)
        members.sort_by_key(|m| !self.attachments.iter().any(|a| a.space == root && a.param == m.param && a.axis == m.axis));
        Ok(Group {
            root: self.spaces[root].name.clone(),
            units: self.spaces[root].units,
            unit_width: self.spaces[root].unit_width,
            spaces: spaces.iter().map(|&s| self.spaces[s].name.clone()).collect(),
            members,
        })
    }
}

#[cfg(test)]
mod tests;
