//! `state_dict` / `load_state_dict`: PyTorch's content (per-parameter state with its step,
//! groups with every hyperparameter and their parameter indices) plus parameter names, saved
//! as one safetensors file: tensors `state.<index>.<slot>` and the rest as JSON in the
//! file's metadata under `optjit`.

use super::{Optimizer, StateInfo};
use crate::ir::SlotKind;
use crate::segment::ElemsRef;
use crate::{DType, Element, Error, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A tensor's values in its own dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 values.
    F32(Vec<f32>),
    /// f64 values.
    F64(Vec<f64>),
    /// bf16 values.
    BF16(Vec<bf16>),
    /// f16 values.
    F16(Vec<f16>),
}

/// `$body` with `$v` bound to the values of whichever variant `$e` is.
macro_rules! each_data {
    ($e:expr, $v:ident => $body:expr) => {
        match $e {
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::BF16($v) => $body,
            TensorData::F16($v) => $body,
        }
    };
}

impl TensorData {
    /// Number of values.
    pub fn len(&self) -> usize {
        each_data!(self, v => v.len())
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype of the values.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F16(_) => DType::F16,
        }
    }

    /// The values converted to `T` as PyTorch's `.to(dtype)` converts them: rounded to
    /// nearest even once, except f64 to bf16 or f16, which PyTorch rounds to f32 first.
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        each_data!(self, v => v.iter().map(|&x| crate::dtype::torch_cast(x.to_f64())).collect())
    }

    /// The values converted to `dtype` (see [`TensorData::to_vec`]).
    pub fn cast(&self, dtype: DType) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(self.to_vec()),
            DType::F64 => TensorData::F64(self.to_vec()),
            DType::BF16 => TensorData::BF16(self.to_vec()),
            DType::F16 => TensorData::F16(self.to_vec()),
        }
    }

    /// A copy of `elems`, in their dtype.
    pub(crate) fn from_elems(elems: ElemsRef<'_>) -> TensorData {
        match elems {
            ElemsRef::F32(v) => TensorData::F32(v.to_vec()),
            ElemsRef::F64(v) => TensorData::F64(v.to_vec()),
            ElemsRef::BF16(v) => TensorData::BF16(v.to_vec()),
            ElemsRef::F16(v) => TensorData::F16(v.to_vec()),
        }
    }

    /// The values as little-endian bytes, with their safetensors dtype.
    fn to_bytes(&self) -> (Dtype, Vec<u8>) {
        match self {
            TensorData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::BF16(v) => (
                Dtype::BF16,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            TensorData::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }

    /// Values of safetensors dtype `dtype` from their little-endian bytes; `None` for a dtype
    /// optjit does not store.
    fn from_bytes(dtype: Dtype, raw: &[u8]) -> Option<TensorData> {
        fn read<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            raw.chunks_exact(N)
                .map(|b| f(b.try_into().expect("N bytes")))
                .collect()
        }
        Some(match dtype {
            Dtype::F32 => TensorData::F32(read(raw, f32::from_le_bytes)),
            Dtype::F64 => TensorData::F64(read(raw, f64::from_le_bytes)),
            Dtype::BF16 => TensorData::BF16(read(raw, bf16::from_le_bytes)),
            Dtype::F16 => TensorData::F16(read(raw, f16::from_le_bytes)),
            _ => return None,
        })
    }
}

/// One parameter's state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    /// Updates received.
    pub step: u64,
    /// Per-element slots, with the parameter's shape.
    pub tensors: BTreeMap<String, (Vec<usize>, TensorData)>,
    /// Scalar slots.
    pub scalars: BTreeMap<String, f64>,
}

/// One parameter group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// Every hyperparameter's value. In JSON, non-finite values are strings (`"inf"`,
    /// `"-inf"`, `"nan"`, `"nan:0x<bits>"`), so that every value reads back bit for bit.
    #[serde(with = "exact_f64")]
    pub hypers: BTreeMap<String, f64>,
    /// Indices of the group's parameters (PyTorch's numbering: groups in order, parameters in
    /// group order).
    pub params: Vec<usize>,
    /// Their names, in the same order.
    pub param_names: Vec<String>,
    /// The group state's values by slot name (see [`crate::ir::SlotKind::Group`]; in
    /// PyTorch, such values sit in the param group beside the hyperparameters). Absent when
    /// the optimizer has no group state.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "exact_f64"
    )]
    pub state: BTreeMap<String, f64>,
    /// The initial values schedulers recorded, by hyperparameter name (PyTorch's
    /// `initial_lr`; see [`crate::Optimizer::initial_hyper`]). Absent when none did.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "exact_f64"
    )]
    pub initial: BTreeMap<String, f64>,
}

/// An optimizer's state, in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDict {
    /// Per-parameter state by index; parameters never updated have none.
    pub state: BTreeMap<usize, StateEntry>,
    /// The groups.
    pub param_groups: Vec<GroupEntry>,
    /// The optimizer state's values by slot name (see [`crate::ir::SlotKind::Optimizer`]);
    /// empty when the optimizer has none. In JSON, as [`GroupEntry::hypers`].
    pub optimizer_state: BTreeMap<String, f64>,
    /// Named JSON documents stored beside the optimizer's state, for what drives it between
    /// steps: schedulers ([`crate::schedule::Scheduler::state_dict`]), gradient accumulation
    /// ([`crate::runtime::GradAccumulation::state_dict`]); see [`StateDict::put`] and
    /// [`StateDict::get`]. Saved in the checkpoint's metadata; `load_state_dict` ignores them.
    pub extra: BTreeMap<String, String>,
    /// Steps the optimizer has applied: with the seed, the key of its stochastic rounding
    /// (see [`crate::Precision`]), so that a resumed run draws the bits the uninterrupted
    /// one would. 0 in dicts saved before it was kept (and from PyTorch).
    pub steps: u64,
}

/// What a non-strict load did not load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Optimizer parameters and hyperparameters the state dict does not mention.
    pub missing: Vec<String>,
    /// State dict entries that match nothing in the optimizer.
    pub unexpected: Vec<String>,
    /// Entries that match but do not fit (wrong length, slot of the wrong kind...).
    pub mismatched: Vec<String>,
}

impl LoadReport {
    /// True when everything was loaded.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// The JSON part of a saved state dict.
#[derive(Serialize, Deserialize)]
struct Meta {
    #[serde(deserialize_with = "unique_keys")]
    state: BTreeMap<String, MetaEntry>,
    param_groups: Vec<GroupEntry>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "exact_f64"
    )]
    optimizer_state: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A JSON object as a map, refusing a key that appears twice (serde_json would keep the last).
fn unique_keys<'de, D, V>(d: D) -> std::result::Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object whose keys are unique")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if out.contains_key(&key) {
                    let why = format!("key `{key}` appears twice");
                    return Err(serde::de::Error::custom(why));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

/// A parameter index written as `to_bytes` writes it: decimal digits, no sign, no leading
/// zero (so `"00"` and `"+0"` cannot both name parameter 0).
fn canonical_index(text: &str) -> Option<usize> {
    text.parse().ok().filter(|i: &usize| i.to_string() == text)
}

#[derive(Serialize, Deserialize)]
struct MetaEntry {
    step: u64,
    #[serde(default, with = "exact_f64")]
    scalars: BTreeMap<String, f64>,
}

/// Maps of `f64` in the JSON metadata, every value read back bit for bit. JSON has numbers
/// for finite values only (serde_json writes those in the shortest form that reads back to
/// the same bits, `-0.0` included); the others are strings: `"inf"`, `"-inf"`, `"nan"` (the
/// quiet NaN `f64::NAN`), and `"nan:0x7ff8000000000001"` (any other NaN, by its bits).
/// Python reads them as `float(s)` except the last form.
pub(crate) mod exact_f64 {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        /// Anything else (`null`, a list...): an error naming the key.
        #[serde(skip_serializing)]
        Other(serde::de::IgnoredAny),
    }

    /// `x` as JSON can hold it.
    fn repr(x: f64) -> Repr {
        match x {
            _ if x.is_finite() => Repr::Number(x),
            f64::INFINITY => Repr::Text("inf".into()),
            f64::NEG_INFINITY => Repr::Text("-inf".into()),
            _ if x.to_bits() == f64::NAN.to_bits() => Repr::Text("nan".into()),
            _ => Repr::Text(format!("nan:{:#018x}", x.to_bits())),
        }
    }

    /// The value of `text`, one of the strings [`repr`] writes.
    fn parse(text: &str) -> Option<f64> {
        match text {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => {
                let hex = text.strip_prefix("nan:0x")?;
                let bits = u64::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 16)?;
                Some(f64::from_bits(bits)).filter(|x| x.is_nan())
            }
        }
    }

    /// Serializes `map` with non-finite values as strings.
    pub(crate) fn serialize<S: Serializer>(
        map: &BTreeMap<String, f64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let reprs: BTreeMap<&str, Repr> = map.iter().map(|(k, &v)| (k.as_str(), repr(v))).collect();
        reprs.serialize(s)
    }

    /// Deserializes what [`serialize`] wrote; any other string is an error naming it.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, f64>, D::Error> {
        let reprs: BTreeMap<String, Repr> = super::unique_keys(d)?;
        let expected = "expected a number, or inf, -inf, nan, nan:0x<16 hex digits>";
        reprs
            .into_iter()
            .map(|(k, r)| match r {
                Repr::Number(x) => Ok((k, x)),
                Repr::Text(t) => match parse(&t) {
                    Some(x) => Ok((k, x)),
                    None => Err(D::Error::custom(format!("`{k}`: `{t}`: {expected}"))),
                },
                Repr::Other(_) => Err(D::Error::custom(format!("`{k}`: {expected}"))),
            })
            .collect()
    }
}

const META_KEY: &str = "optjit";

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidStateDict {
        reason: reason.into(),
    }
}

impl StateDict {
    /// Stores `value` as the JSON document `name` of [`StateDict::extra`], replacing one of
    /// that name.
    ///
    /// ```
    /// use optjit::{optim::Sgd, runtime::GradAccumulation, Optimizer};
    ///
    /// let opt = Optimizer::new(&Sgd::default().graph()?)?;
    /// let acc = GradAccumulation::new(4, true)?;
    /// let mut dict = opt.state_dict();
    /// dict.put("accumulation", &acc.state_dict())?;
    /// let back = optjit::runtime::StateDict::from_bytes(&dict.to_bytes()?)?;
    /// assert_eq!(back.get("accumulation")?, Some(acc.state_dict()));
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn put<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        let json = serde_json::to_string(value).map_err(|e| invalid(e.to_string()))?;
        self.extra.insert(name.to_string(), json);
        Ok(())
    }

    /// The JSON document `name` of [`StateDict::extra`] as a `T`, if there is one; fails with
    /// [`Error::InvalidStateDict`] when it is not a `T`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.extra.get(name) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| invalid(format!("`{name}`: {e}"))),
        }
    }

    /// Serializes to safetensors bytes (loadable by Python's `safetensors` package: tensors
    /// `state.<index>.<slot>` with the parameters' shapes, JSON metadata under `optjit`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = Meta {
            state: self
                .state
                .iter()
                .map(|(i, e)| {
                    (
                        i.to_string(),
                        MetaEntry {
                            step: e.step,
                            scalars: e.scalars.clone(),
                        },
                    )
                })
                .collect(),
            param_groups: self.param_groups.clone(),
            optimizer_state: self.optimizer_state.clone(),
            extra: self.extra.clone(),
            steps: self.steps,
        };
        let json = serde_json::to_string(&meta).map_err(|e| invalid(e.to_string()))?;
        let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, entry) in &self.state {
            for (slot, (shape, data)) in &entry.tensors {
                let (dtype, raw) = data.to_bytes();
                bytes.push((format!("state.{i}.{slot}"), dtype, shape.clone(), raw));
            }
        }
        let views = bytes
            .iter()
            .map(|(name, dtype, shape, raw)| {
                let view = TensorView::new(*dtype, shape.clone(), raw)
                    .map_err(|e| invalid(e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([(META_KEY.to_string(), json)]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
    }

    /// Parses bytes written by [`StateDict::to_bytes`]; anything malformed is an
    /// [`Error::InvalidStateDict`].
    pub fn from_bytes(bytes: &[u8]) -> Result<StateDict> {
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                invalid(format!(
                    "no `{META_KEY}` metadata: not an optjit state dict"
                ))
            })?;
        let meta: Meta =
            serde_json::from_str(json).map_err(|e| invalid(format!("metadata: {e}")))?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let mut state: BTreeMap<usize, StateEntry> = BTreeMap::new();
        for (key, entry) in meta.state {
            let index = canonical_index(&key)
                .ok_or_else(|| invalid(format!("state key `{key}` is not an index")))?;
            state.insert(
                index,
                StateEntry {
                    step: entry.step,
                    tensors: BTreeMap::new(),
                    scalars: entry.scalars,
                },
            );
        }
        for (name, view) in tensors.tensors() {
            let rest = name
                .strip_prefix("state.")
                .ok_or_else(|| invalid(format!("unexpected tensor `{name}`")))?;
            let (index, slot) = rest
                .split_once('.')
                .ok_or_else(|| invalid(format!("unexpected tensor `{name}`")))?;
            let index = canonical_index(index)
                .ok_or_else(|| invalid(format!("unexpected tensor `{name}`")))?;
            let entry = state
                .get_mut(&index)
                .ok_or_else(|| invalid(format!("tensor `{name}` belongs to no state entry")))?;
            let data = TensorData::from_bytes(view.dtype(), view.data()).ok_or_else(|| {
                invalid(format!(
                    "tensor `{name}` has dtype {:?}; optjit stores F32, F64, BF16 and F16",
                    view.dtype()
                ))
            })?;
            entry
                .tensors
                .insert(slot.to_string(), (view.shape().to_vec(), data));
        }
        Ok(StateDict {
            state,
            param_groups: meta.param_groups,
            optimizer_state: meta.optimizer_state,
            extra: meta.extra,
            steps: meta.steps,
        })
    }

    /// Writes [`StateDict::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads a file written by [`StateDict::save`].
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<StateDict> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        StateDict::from_bytes(&bytes)
    }
}

/// A parameter's new state, ready to apply.
struct Loaded {
    param: usize,
    state: StateInfo,
    /// Per element slot (store order): the values in the slot's dtype.
    buffers: Vec<TensorData>,
}

impl Optimizer {
    /// PyTorch's numbering of parameters: groups in order, parameters in group order.
    fn torch_order(&self) -> Vec<usize> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().copied())
            .collect()
    }

    /// The optimizer's state: per-parameter state (step, slots) and every group's
    /// hyperparameters, with parameter names.
    pub fn state_dict(&self) -> StateDict {
        let order = self.torch_order();
        let mut state = BTreeMap::new();
        for (torch_index, &i) in order.iter().enumerate() {
            let Some(info) = &self.state[i] else { continue };
            let mut entry = StateEntry {
                step: info.step,
                tensors: BTreeMap::new(),
                scalars: BTreeMap::new(),
            };
            let p = &self.params[i];
            let mut element = 0;
            for (n, slot) in self.engine.program.slots.iter().enumerate() {
                match slot.kind {
                    SlotKind::Scalar => {
                        entry.scalars.insert(slot.name.clone(), info.scalars[n]);
                        continue;
                    }
                    SlotKind::Group | SlotKind::Optimizer => continue,
                    SlotKind::Element => {}
                }
                let range = p.offset..p.offset + p.len;
                let slot_buf = &self.store_of(i).slots[element];
                let data = TensorData::from_elems(slot_buf.elems_ref().slice(range));
                entry
                    .tensors
                    .insert(slot.name.clone(), (p.shape.clone(), data));
                element += 1;
            }
            state.insert(torch_index, entry);
        }
        let mut next = 0;
        let param_groups = self
            .groups
            .iter()
            .map(|g| {
                let params: Vec<usize> = (next..next + g.params.len()).collect();
                next += g.params.len();
                GroupEntry {
                    hypers: self
                        .engine
                        .program
                        .hypers
                        .iter()
                        .zip(&g.hypers)
                        .map(|(h, &v)| (h.name.clone(), v))
                        .collect(),
                    params,
                    param_names: g
                        .params
                        .iter()
                        .map(|&i| self.params[i].name.clone())
                        .collect(),
                    state: self
                        .engine
                        .program
                        .slots
                        .iter()
                        .zip(&g.scalars)
                        .filter(|(s, _)| s.kind == SlotKind::Group)
                        .map(|(s, &v)| (s.name.clone(), v))
                        .collect(),
                    initial: (self.engine.program.hypers.iter())
                        .zip(&g.initial)
                        .filter_map(|(h, v)| v.map(|v| (h.name.clone(), v)))
                        .collect(),
                }
            })
            .collect();
        let slots = self.engine.program.slots.iter().zip(&self.shared);
        let optimizer_state = slots
            .filter(|(s, _)| s.kind == SlotKind::Optimizer)
            .map(|(s, &v)| (s.name.clone(), v))
            .collect();
        StateDict {
            state,
            param_groups,
            optimizer_state,
            extra: BTreeMap::new(),
            steps: self.applied,
        }
    }

    /// Loads `dict`, matching parameters by name when the dict has names, else by position.
    ///
    /// With `strict`, any missing, unexpected or mismatched entry is an error. Otherwise what
    /// fits is loaded and the rest reported. Either way everything is checked before anything
    /// changes: a failed load leaves the optimizer exactly as it was. State tensors are cast
    /// to their parameter's dtype, as PyTorch does.
    pub fn load_state_dict(&mut self, dict: &StateDict, strict: bool) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        // Parameter matching: the dict's index -> our parameter.
        let by_name = dict
            .param_groups
            .iter()
            .all(|g| g.param_names.len() == g.params.len())
            && dict.param_groups.iter().any(|g| !g.param_names.is_empty());
        let mut target: HashMap<usize, usize> = HashMap::new();
        let mut seen = vec![false; self.params.len()];
        for (k, group) in dict.param_groups.iter().enumerate() {
            if group.params.len() != group.param_names.len() && !group.param_names.is_empty() {
                return Err(invalid(format!(
                    "group {k} has {} params but {} names",
                    group.params.len(),
                    group.param_names.len()
                )));
            }
            for (j, &index) in group.params.iter().enumerate() {
                let ours = if by_name {
                    self.names.get(&group.param_names[j]).copied()
                } else {
                    self.groups.get(k).and_then(|g| g.params.get(j)).copied()
                };
                match ours {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        if target.insert(index, i).is_some() {
                            return Err(invalid(format!("parameter index {index} appears twice")));
                        }
                        // Matched by name, it must sit in the same group (whose hyperparameters
                        // the dict's group k sets), as PyTorch's groups are matched in order.
                        let group_of = self.params[i].group;
                        if group_of != k {
                            report.mismatched.push(format!(
                                "parameter `{}` is in group {k} of the dict, {group_of} of the optimizer",
                                self.params[i].name
                            ));
                        }
                    }
                    Some(i) => report
                        .unexpected
                        .push(format!("parameter `{}` listed twice", self.params[i].name)),
                    None => report
                        .unexpected
                        .push(format!("parameter {}", describe(group, j))),
                }
            }
        }
        for (i, &s) in seen.iter().enumerate() {
            if !s {
                report
                    .missing
                    .push(format!("parameter `{}`", self.params[i].name));
            }
        }
        // Hyperparameters and group state, group by group.
        let mut hypers: Vec<Vec<f64>> = self.groups.iter().map(|g| g.hypers.clone()).collect();
        // Schedulers' initial values: those the dict has, for hyperparameters the optimizer has.
        let mut initial: Vec<Vec<Option<f64>>> =
            self.groups.iter().map(|g| g.initial.clone()).collect();
        for (k, (group, values)) in dict.param_groups.iter().zip(&mut initial).enumerate() {
            for (name, &v) in &group.initial {
                match self.engine.program.hyper_index(name) {
                    Some(n) => values[n] = Some(v),
                    None => report
                        .unexpected
                        .push(format!("initial value of `{name}` in group {k}")),
                }
            }
        }
        let mut group_state: Vec<Vec<f64>> =
            self.groups.iter().map(|g| g.scalars.clone()).collect();
        for (k, (group, values)) in dict.param_groups.iter().zip(&mut group_state).enumerate() {
            let of = format!(" of group {k}");
            self.load_shared(SlotKind::Group, &group.state, values, &of, &mut report);
        }
        let mut shared = self.shared.clone();
        let saved = &dict.optimizer_state;
        self.load_shared(SlotKind::Optimizer, saved, &mut shared, "", &mut report);
        if dict.param_groups.len() != self.groups.len() {
            report.mismatched.push(format!(
                "the dict has {} parameter groups, the optimizer {}",
                dict.param_groups.len(),
                self.groups.len()
            ));
        }
        for (k, (group, values)) in dict.param_groups.iter().zip(&mut hypers).enumerate() {
            for (n, h) in self.engine.program.hypers.iter().enumerate() {
                match group.hypers.get(&h.name) {
                    Some(&v) => values[n] = v,
                    None => report
                        .missing
                        .push(format!("hyperparameter `{}` of group {k}", h.name)),
                }
            }
            for name in group.hypers.keys() {
                if self.engine.program.hyper_index(name).is_none() {
                    report
                        .unexpected
                        .push(format!("hyperparameter `{name}` of group {k}"));
                }
            }
        }
        // Per-parameter state.
        let mut loaded = Vec::new();
        for (&index, entry) in &dict.state {
            match target.get(&index) {
                Some(&i) => match self.check_entry(i, entry) {
                    Ok(l) => loaded.push(l),
                    Err(why) => report
                        .mismatched
                        .push(format!("state of `{}`: {why}", self.params[i].name)),
                },
                None => report
                    .unexpected
                    .push(format!("state of parameter index {index}")),
            }
        }
        if strict && !report.is_clean() {
            let mut all = report
                .missing
                .iter()
                .map(|m| format!("missing {m}"))
                .collect::<Vec<_>>();
            all.extend(report.unexpected.iter().map(|m| format!("unexpected {m}")));
            all.extend(report.mismatched.iter().cloned());
            return Err(invalid(all.join("; ")));
        }
        // Everything checked; the state memory the loaded entries need, before any change.
        let (n_elem, huge) = (self.engine.program.element_slots().count(), self.huge_pages);
        for l in &loaded {
            self.store_of_mut(l.param).ensure_slots(n_elem, huge)?;
        }
        // Apply.
        let groups = self.groups.iter_mut().zip(hypers).zip(group_state);
        for (((g, values), state), initial) in groups.zip(initial) {
            g.hypers = values;
            g.scalars = state;
            g.initial = initial;
        }
        self.shared = shared;
        self.applied = dict.steps;
        for (i, s) in seen.iter().enumerate() {
            if *s {
                self.state[i] = None;
            }
        }
        for l in loaded {
            self.apply_loaded(l);
        }
        Ok(report)
    }

    /// Reads the shared state of `kind` (group or optimizer slots) from `saved` into
    /// `values` (one per slot), reporting slots it lacks and names that are no such slot;
    /// `of` ends each report line (` of group k`).
    fn load_shared(
        &self,
        kind: SlotKind,
        saved: &BTreeMap<String, f64>,
        values: &mut [f64],
        of: &str,
        report: &mut LoadReport,
    ) {
        let slots = &self.engine.program.slots;
        let what = kind.keyword();
        for (n, slot) in slots.iter().enumerate().filter(|(_, s)| s.kind == kind) {
            match saved.get(&slot.name) {
                Some(&v) => values[n] = v,
                None => report.missing.push(format!("{what} `{}`{of}", slot.name)),
            }
        }
        let known = |name: &String| slots.iter().any(|s| &s.name == name && s.kind == kind);
        for name in saved.keys().filter(|n| !known(n)) {
            report.unexpected.push(format!("{what} `{name}`{of}"));
        }
    }

    /// Checks one state entry against parameter `i` and converts it.
    fn check_entry(&self, i: usize, entry: &StateEntry) -> std::result::Result<Loaded, String> {
        let p = &self.params[i];
        let mut scalars = self.slot_inits.clone();
        let mut buffers = Vec::new();
        for (n, slot) in self.engine.program.slots.iter().enumerate() {
            if self.is_scalar_slot(n) {
                scalars[n] = *entry
                    .scalars
                    .get(&slot.name)
                    .ok_or_else(|| format!("no scalar `{}`", slot.name))?;
                continue;
            }
            if slot.kind.is_shared() {
                continue; // in the param group, or the optimizer's
            }
            let (shape, data) = entry
                .tensors
                .get(&slot.name)
                .ok_or_else(|| format!("no tensor `{}`", slot.name))?;
            if *shape != p.shape {
                return Err(format!(
                    "`{}` has shape {shape:?}, the parameter {:?}",
                    slot.name, p.shape
                ));
            }
            if data.len() != p.len {
                return Err(format!(
                    "`{}` has {} values, the parameter {}",
                    slot.name,
                    data.len(),
                    p.len
                ));
            }
            let stream = 2 + buffers.len() as u32;
            buffers.push(data.cast(self.store_of(i).layout.dtype(stream)));
        }
        let known = |name: &String| {
            let slot = self.engine.program.slots.iter().find(|s| &s.name == name);
            slot.is_some_and(|s| !s.kind.is_shared())
        };
        if let Some(extra) = entry
            .tensors
            .keys()
            .chain(entry.scalars.keys())
            .find(|k| !known(k))
        {
            return Err(format!("unknown slot `{extra}`"));
        }
        Ok(Loaded {
            param: i,
            state: StateInfo {
                step: entry.step,
                scalars,
            },
            buffers,
        })
    }

    fn apply_loaded(&mut self, l: Loaded) {
        let p = &self.params[l.param];
        let range = p.offset..p.offset + p.len;
        let store = self.store_of_mut(l.param);
        for (slot, data) in store.slots.iter_mut().zip(&l.buffers) {
            slot.write(range.clone(), data);
        }
        self.state[l.param] = Some(l.state);
    }
}

fn describe(group: &GroupEntry, j: usize) -> String {
    match group.param_names.get(j) {
        Some(name) => format!("`{name}`"),
        None => format!("index {}", group.params[j]),
    }
}
