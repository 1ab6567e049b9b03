//! A typed ONNX graph builder.
//!
//! A [`Graph`] records nodes as they are asked for; each builder method is named after the ONNX
//! operator it emits (`matmul` → `MatMul`) and returns [`Tensor`] handles: cheap `Copy` ids whose
//! element type and shape (with symbolic dims such as `batch`) the graph infers and checks.
//! [`Graph::build`] turns the recording into a [`Model`] (opset 20, default domain only).
//!
//! Symbolic dims can be turned into run-time values ([`Graph::dim_value`]): the graph remembers,
//! for each name, one tensor and axis that carries it and emits `Shape` for it. That is how
//! `Reshape`/`Expand` targets and backward rules handle sizes unknown when building.

mod emit;
mod external;
mod host_ops;
mod ops;
mod ops_shape;
mod quantized;
mod stored_tables;
mod types;

use std::collections::BTreeMap;

pub use emit::Model;
pub use external::{ExternalDataWriter, ExternalTensor};
pub use host_ops::{HOST_KERNELS_DOMAIN, Kernels};
pub(crate) use ops::norm_axis;
pub use ops_shape::Reduction;
pub use quantized::MICROSOFT_DOMAIN;
pub use types::{DType, Dim, TensorData, shape_string};

use crate::{Error, Result};

/// The ONNX opset the builder targets (`Gelu` with `approximate="tanh"` needs 20).
pub const OPSET: i64 = 20;

/// The latest opset a built model may declare ([`Model::with_opset`]); ONNX Runtime 1.31
/// runs up to 26.
pub const MAX_OPSET: i64 = 26;

/// Handle to a value in a [`Graph`]: a graph input, a constant, an initializer or a node output.
///
/// A handle belongs to the graph that made it; using it with another graph is a bug (it
/// indexes that graph's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tensor {
    id: u32,
    dtype: DType,
}

impl Tensor {
    /// Element type.
    pub fn dtype(self) -> DType {
        self.dtype
    }

    pub(crate) fn index(self) -> usize {
        self.id as usize
    }
}

/// A node attribute.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    String(String),
    Tensor(TensorData),
}

/// What the graph knows about one value.
#[derive(Clone, Debug)]
pub(crate) struct ValueInfo {
    pub name: String,
    pub shape: Vec<Dim>,
    /// Index of the node that computes it; `None` for graph inputs and initializers.
    pub producer: Option<usize>,
    /// The value, when it is a small constant known at build time.
    pub data: Option<TensorData>,
}

/// The value of an initializer: its data, or where it lies in an external data file.
#[derive(Clone, Debug)]
pub(crate) enum Initializer {
    Inline(TensorData),
    External(ExternalTensor),
}

/// One recorded operator application.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub op: &'static str,
    /// The operator set: `""` for ONNX's own, [`HOST_KERNELS_DOMAIN`] for pipe's CPU kernels.
    pub domain: &'static str,
    pub name: String,
    /// `None` marks an omitted optional input.
    pub inputs: Vec<Option<Tensor>>,
    pub outputs: Vec<Tensor>,
    pub attrs: Vec<(&'static str, Attr)>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            Attr::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            Attr::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            Attr::Ints(v) => Some(v),
            _ => None,
        }
    }

    pub fn attr_string(&self, name: &str) -> Option<&str> {
        match self.attr(name)? {
            Attr::String(s) => Some(s),
            _ => None,
        }
    }

    /// Input `i`, which the op requires.
    pub fn input(&self, i: usize) -> Tensor {
        self.inputs[i].expect("required input present: the builder never omits it")
    }
}

/// An ONNX graph being built. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    name: String,
    pub(crate) values: Vec<ValueInfo>,
    pub(crate) nodes: Vec<Node>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    initializers: Vec<(Tensor, Initializer)>,
    scope: String,
    node_names: BTreeMap<String, usize>,
    consts: BTreeMap<(DType, Vec<i64>, Vec<u8>), Tensor>,
    sym_sources: BTreeMap<String, (Tensor, usize)>,
    unknown_dims: usize,
    kernels: Kernels,
    /// How [`Graph::quantize_frozen`] stores int8 integers ([`Graph::set_int8_storage`]).
    int8_storage: crate::quantize::Int8Storage,
    /// Int8 weights of `DynamicQuantizeMatMul` → the same integers transposed, for the input
    /// gradient (declared by [`Graph::quantize_frozen`]).
    transposed_twins: BTreeMap<Tensor, Tensor>,
    /// Packed 4-bit blocks of `MatMulNBits` → their multipliers and row scales, the int8 grid
    /// the blocks are nested in (declared by [`Graph::quantize_frozen`]).
    int4_grids: BTreeMap<Tensor, quantized::Int4Grid>,
    /// Tables with a row that takes no gradient ([`Graph::set_padding_row`]).
    padding_rows: BTreeMap<Tensor, i64>,
}

impl Graph {
    /// An empty graph; `name` becomes `GraphProto.name`.
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Makes row `row` of the table `table` take no gradient through a `Gather` (PyTorch's
    /// `nn.Embedding(…, padding_idx=row)`); its values are read as any other row's.
    pub fn set_padding_row(&mut self, table: Tensor, row: i64) {
        self.padding_rows.insert(table, row);
    }

    /// The row of `table` that takes no gradient, if any ([`Graph::set_padding_row`]).
    pub(crate) fn padding_row(&self, table: Tensor) -> Option<i64> {
        self.padding_rows.get(&table).copied()
    }

    /// Shape of `t`.
    pub fn shape(&self, t: Tensor) -> &[Dim] {
        &self.values[t.index()].shape
    }

    /// Rank of `t`.
    pub fn rank(&self, t: Tensor) -> usize {
        self.values[t.index()].shape.len()
    }

    /// Name of `t` in the ONNX graph.
    pub fn name(&self, t: Tensor) -> &str {
        &self.values[t.index()].name
    }

    /// The graph inputs declared so far, in order.
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// The graph outputs declared so far, in order.
    pub fn outputs(&self) -> &[Tensor] {
        &self.outputs
    }

    /// Number of nodes recorded (before pruning).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The value of a constant made by [`Graph::constant`] or one of its shorthands.
    pub fn constant_value(&self, t: Tensor) -> Option<&TensorData> {
        self.values[t.index()].data.as_ref()
    }

    // ---- scopes -----------------------------------------------------------------------------

    /// The current scope prefix of node names (`transformer.h.3.attn`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Replaces the scope prefix; returns the previous one so it can be restored.
    pub fn set_scope(&mut self, scope: impl Into<String>) -> String {
        std::mem::replace(&mut self.scope, scope.into())
    }

    /// Runs `f` with `name` appended to the scope (joined with `.`), then restores it.
    ///
    /// Nodes emitted inside are named `outer.name/OpType`, so ONNX Runtime errors point at a layer.
    pub fn with_scope<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let inner = if self.scope.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.scope)
        };
        let outer = self.set_scope(inner);
        let r = f(self);
        self.scope = outer;
        r
    }

    // ---- inputs, outputs, constants ---------------------------------------------------------

    /// Declares a graph input. Symbolic dims named here can later be read at run time.
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[Dim]) -> Result<Tensor> {
        if self.values.iter().any(|v| v.name == name) {
            return Err(Error::Build {
                node: name.to_string(),
                message: format!("a value named `{name}` already exists"),
            });
        }
        let t = self.new_value(name.to_string(), dtype, shape.to_vec(), None, None);
        self.inputs.push(t);
        Ok(t)
    }

    /// Marks `t` as a graph output named `name` (an `Identity` is added when `t` already has
    /// another name). Returns the output tensor.
    pub fn output(&mut self, t: Tensor, name: &str) -> Result<Tensor> {
        let out = if self.name(t) == name {
            t
        } else {
            if self.values.iter().any(|v| v.name == name) {
                return Err(Error::Build {
                    node: name.to_string(),
                    message: format!("a value named `{name}` already exists"),
                });
            }
            let o = self.identity(t)?;
            self.values[o.index()].name = name.to_string();
            o
        };
        self.outputs.push(out);
        Ok(out)
    }

    /// The graph output that carries `t`: `t` itself or the `Identity` [`Graph::output`] added.
    pub fn output_for(&self, t: Tensor) -> Option<Tensor> {
        self.outputs.iter().copied().find(|&o| {
            o == t
                || self.values[o.index()].producer.is_some_and(|p| {
                    self.nodes[p].op == "Identity" && self.nodes[p].inputs[0] == Some(t)
                })
        })
    }

    /// Adds an initializer: a named value stored in the model file. The forward graph exported
    /// for inference keeps its weights this way; training graphs take parameters as inputs.
    pub fn initializer(&mut self, name: &str, data: TensorData) -> Result<Tensor> {
        if self.values.iter().any(|v| v.name == name) {
            return Err(Error::Build {
                node: name.to_string(),
                message: format!("a value named `{name}` already exists"),
            });
        }
        let shape = data.dims().iter().map(|&d| Dim::Fixed(d)).collect();
        let t = self.new_value(name.to_string(), data.dtype(), shape, None, None);
        self.initializers.push((t, Initializer::Inline(data)));
        Ok(t)
    }

    /// Turns the graph input `t` into an initializer holding `data`: the same forward code that
    /// takes parameters as inputs for training then exports with its trained weights inside.
    pub fn freeze_input(&mut self, t: Tensor, data: TensorData) -> Result<()> {
        let (dtype, dims) = (data.dtype(), data.dims().to_vec());
        self.freeze(t, dtype, &dims, Initializer::Inline(data))
    }

    /// [`Graph::freeze_input`] with the value in an external data file, already written there
    /// ([`ExternalDataWriter`]): the graph holds no weight bytes, so a model of any size is
    /// built and saved with one tensor in memory at a time.
    pub fn freeze_input_external(&mut self, t: Tensor, data: ExternalTensor) -> Result<()> {
        let (dtype, dims) = (data.dtype(), data.dims().to_vec());
        self.freeze(t, dtype, &dims, Initializer::External(data))
    }

    /// Turns the graph input `t` into the initializer `value` of `dtype` and `dims`, which
    /// must be the input's.
    fn freeze(&mut self, t: Tensor, dtype: DType, dims: &[i64], value: Initializer) -> Result<()> {
        let Some(pos) = self.inputs.iter().position(|&i| i == t) else {
            return Err(Error::Build {
                node: self.name(t).to_string(),
                message: "only a graph input can be frozen into an initializer".into(),
            });
        };
        let dims: Vec<Dim> = dims.iter().map(|&d| Dim::Fixed(d)).collect();
        if dtype != t.dtype() || dims != self.values[t.index()].shape {
            return Err(Error::Build {
                node: self.name(t).to_string(),
                message: format!(
                    "input is {} {}, data is {} {}",
                    t.dtype(),
                    shape_string(self.shape(t)),
                    dtype,
                    shape_string(&dims)
                ),
            });
        }
        self.inputs.remove(pos);
        self.initializers.push((t, value));
        Ok(())
    }

    /// A constant (emitted as a `Constant` node; identical constants are shared).
    pub fn constant(&mut self, data: TensorData) -> Tensor {
        let key = (data.dtype(), data.dims().to_vec(), data.bytes().to_vec());
        if let Some(&t) = self.consts.get(&key) {
            return t;
        }
        let name = format!("const_{}", self.consts.len());
        let shape = data.dims().iter().map(|&d| Dim::Fixed(d)).collect();
        let t = self.new_value(name.clone(), data.dtype(), shape, None, Some(data.clone()));
        let node = Node {
            op: "Constant",
            domain: "",
            name,
            inputs: vec![],
            outputs: vec![t],
            attrs: vec![("value", Attr::Tensor(data))],
        };
        self.values[t.index()].producer = Some(self.nodes.len());
        self.nodes.push(node);
        self.consts.insert(key, t);
        t
    }

    /// A rank-0 constant of type `dtype`.
    pub fn scalar(&mut self, dtype: DType, value: f64) -> Tensor {
        self.constant(TensorData::scalar(dtype, value))
    }

    /// A rank-1 `int64` constant (axes, shapes, starts…).
    pub fn const_i64s(&mut self, values: &[i64]) -> Tensor {
        let data =
            TensorData::i64(&[values.len() as i64], values).expect("dims match a slice's length");
        self.constant(data)
    }

    /// The run-time size of `dim` as a rank-1 `int64` tensor of one element.
    ///
    /// A fixed dim is a constant; a symbolic one is sliced out of `Shape` of a tensor that has it
    /// (products `a*b` multiply their factors).
    pub fn dim_value(&mut self, dim: &Dim) -> Result<Tensor> {
        match dim {
            Dim::Fixed(n) => Ok(self.const_i64s(&[*n])),
            Dim::Sym(name) => {
                if let Some(&(t, axis)) = self.sym_sources.get(name) {
                    let axis = axis as i64;
                    return self.shape_op(t, Some(axis), Some(axis + 1));
                }
                if name.contains('*') {
                    let mut acc: Option<Tensor> = None;
                    for f in name.split('*') {
                        let v = self.dim_value(&Dim::parse_factor(f))?;
                        acc = Some(match acc {
                            None => v,
                            Some(a) => self.mul(a, v)?,
                        });
                    }
                    return acc
                        .ok_or_else(|| self.err("Shape", format!("empty dim name `{name}`")));
                }
                Err(self.err(
                    "Shape",
                    format!("no tensor in the graph carries the symbolic dim `{name}`"),
                ))
            }
        }
    }

    /// The run-time value of a whole shape: a rank-1 `int64` tensor (for `Reshape`, `Expand`…).
    pub fn shape_value(&mut self, shape: &[Dim]) -> Result<Tensor> {
        if let Some(fixed) = shape.iter().map(Dim::fixed).collect::<Option<Vec<_>>>() {
            return Ok(self.const_i64s(&fixed));
        }
        let parts = shape
            .iter()
            .map(|d| self.dim_value(d))
            .collect::<Result<Vec<_>>>()?;
        self.concat(&parts, 0)
    }

    // ---- internals --------------------------------------------------------------------------

    fn new_value(
        &mut self,
        name: String,
        dtype: DType,
        shape: Vec<Dim>,
        producer: Option<usize>,
        data: Option<TensorData>,
    ) -> Tensor {
        let id = u32::try_from(self.values.len()).expect("fewer than 2^32 values in a graph");
        let t = Tensor { id, dtype };
        for (axis, d) in shape.iter().enumerate() {
            if let Dim::Sym(s) = d {
                self.sym_sources.entry(s.clone()).or_insert((t, axis));
            }
        }
        self.values.push(ValueInfo {
            name,
            shape,
            producer,
            data,
        });
        t
    }

    /// A fresh symbolic dim for a size the builder cannot infer.
    pub(crate) fn unknown_dim(&mut self) -> Dim {
        self.unknown_dims += 1;
        Dim::unknown(self.unknown_dims)
    }

    /// The name the next node of type `op` would get.
    fn node_name(&self, op: &str) -> String {
        if self.scope.is_empty() {
            op.to_string()
        } else {
            format!("{}/{op}", self.scope)
        }
    }

    /// A build error attributed to the node of type `op` about to be emitted.
    pub(crate) fn err(&self, op: &str, message: impl Into<String>) -> Error {
        Error::Build {
            node: self.node_name(op),
            message: message.into(),
        }
    }

    /// Records a node and returns its outputs, whose types and shapes the caller inferred.
    pub(crate) fn push_node(
        &mut self,
        op: &'static str,
        inputs: Vec<Option<Tensor>>,
        attrs: Vec<(&'static str, Attr)>,
        outputs: Vec<(DType, Vec<Dim>)>,
    ) -> Vec<Tensor> {
        let base = self.node_name(op);
        let n = self.node_names.entry(base.clone()).or_insert(0);
        *n += 1;
        let name = if *n == 1 { base } else { format!("{base}_{n}") };
        let index = self.nodes.len();
        let outs: Vec<Tensor> = outputs
            .into_iter()
            .enumerate()
            .map(|(i, (dtype, shape))| {
                let vname = if i == 0 {
                    name.clone()
                } else {
                    format!("{name}:{i}")
                };
                self.new_value(vname, dtype, shape, Some(index), None)
            })
            .collect();
        self.nodes.push(Node {
            op,
            domain: "",
            name,
            inputs,
            outputs: outs.clone(),
            attrs,
        });
        outs
    }

    /// `(node, input slot)` of every read of `t`.
    pub(crate) fn users(&self, t: Tensor) -> Vec<(usize, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                n.inputs
                    .iter()
                    .enumerate()
                    .filter(move |(_, x)| **x == Some(t))
                    .map(move |(slot, _)| (i, slot))
            })
            .collect()
    }

    /// [`Graph::push_node`] for the common one-output case.
    pub(crate) fn push1(
        &mut self,
        op: &'static str,
        inputs: &[Tensor],
        attrs: Vec<(&'static str, Attr)>,
        dtype: DType,
        shape: Vec<Dim>,
    ) -> Tensor {
        let ins = inputs.iter().copied().map(Some).collect();
        self.push_node(op, ins, attrs, vec![(dtype, shape)])[0]
    }
}

impl Dim {
    fn parse_factor(s: &str) -> Dim {
        match s.parse::<i64>() {
            Ok(n) => Dim::Fixed(n),
            Err(_) => Dim::Sym(s.to_string()),
        }
    }
}
