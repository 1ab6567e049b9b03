//! Turning a recorded [`Graph`] into an ONNX `ModelProto`.

use std::path::Path;

use prost::Message;

use super::external::{ExternalDataWriter, io};
use super::{Attr, DType, Dim, Graph, Initializer, MAX_OPSET, OPSET, Tensor};
use crate::proto::{self, attribute_type};
use crate::{Error, Result};

/// The IR version that goes with `opset`, from the ONNX release that introduced the opset
/// (`onnx.helper.VERSION_TABLE`): opset 20 came with IR 9 (ONNX 1.15), 21 and 22 with IR 10,
/// 23 with 11, 24 with 12, 25 and 26 with 13.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=20 => 9,
        21 | 22 => 10,
        23 => 11,
        24 => 12,
        _ => 13,
    }
}

/// A finished ONNX model.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    proto: proto::ModelProto,
}

impl Model {
    /// The protobuf message.
    pub fn proto(&self) -> &proto::ModelProto {
        &self.proto
    }

    /// Total bytes of initializer data: above 2 GB (protobuf's limit) save with external data.
    pub fn initializer_bytes(&self) -> usize {
        self.proto.graph.as_ref().map_or(0, |g| {
            g.initializer
                .iter()
                .map(|t| t.raw_data.as_ref().map_or(0, Vec::len))
                .sum()
        })
    }

    /// The opset the model declares.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
            .and_then(|o| o.version)
            .unwrap_or(OPSET)
    }

    /// The same model declaring opset `opset` (from [`OPSET`] to [`MAX_OPSET`]) and its IR
    /// version. The operators the builder emits mean the same in every opset of that range
    /// (later opsets only add element types), so only the declaration changes.
    pub fn with_opset(mut self, opset: i64) -> Result<Model> {
        if !(OPSET..=MAX_OPSET).contains(&opset) {
            return Err(Error::Data(format!(
                "opset {opset} is not supported; choose one from {OPSET} to {MAX_OPSET}"
            )));
        }
        for import in &mut self.proto.opset_import {
            if import.domain.as_deref().unwrap_or("").is_empty() {
                import.version = Some(opset);
            }
        }
        self.proto.ir_version = Some(ir_version(opset));
        Ok(self)
    }

    /// Serialised bytes: deterministic, the same graph always gives the same bytes. Models
    /// whose initializers pass 2 GB cannot be parsed back: use [`Model::save`] with a threshold.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Writes the model to `path`. Initializers larger than `external_threshold` bytes (when
    /// given) go to `<file name>.data` beside it, as ONNX external data, which models over
    /// 2 GB need (protobuf's limit).
    pub fn save(&self, path: &Path, external_threshold: Option<usize>) -> Result<()> {
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Data(format!("`{}` has no file name", path.display())))?;
        let data_name = format!("{}.data", file_name.to_string_lossy());
        self.save_with_data_file(path, &data_name, external_threshold)
    }

    /// [`Model::save`] with the external data in `data_name` (a file name beside `path`)
    /// rather than `<file name>.data`. Works on a copy of the model; [`Model::write`] does the
    /// same without one.
    pub fn save_with_data_file(
        &self,
        path: &Path,
        data_name: &str,
        external_threshold: Option<usize>,
    ) -> Result<()> {
        match external_threshold {
            None => fs_err::write(path, self.to_bytes()).map_err(io("failed to write model", path)),
            Some(_) => self.clone().write(path, data_name, external_threshold),
        }
    }

    /// [`Model::save_with_data_file`] consuming the model: each initializer over the threshold
    /// is streamed into the data file ([`ExternalDataWriter`]) and its bytes freed at once, so
    /// writing holds no second copy of the weights.
    pub fn write(
        mut self,
        path: &Path,
        data_name: &str,
        external_threshold: Option<usize>,
    ) -> Result<()> {
        if let (Some(threshold), Some(graph)) = (external_threshold, self.proto.graph.as_mut()) {
            let mut data: Option<ExternalDataWriter> = None;
            for t in &mut graph.initializer {
                if t.raw_data.as_ref().is_none_or(|r| r.len() <= threshold) {
                    continue;
                }
                let Some(raw) = t.raw_data.take() else {
                    continue;
                };
                let code = t.data_type.unwrap_or_default();
                let dtype = DType::from_onnx_code(code).ok_or_else(|| {
                    Error::Data(format!("initializer {:?} has data type {code}", t.name))
                })?;
                let out = match &mut data {
                    Some(out) => out,
                    None => data.insert(ExternalDataWriter::create(path, data_name)?),
                };
                *t = out
                    .append_bytes(dtype, &t.dims, &raw)?
                    .to_proto(t.name.take());
            }
            if let Some(data) = data {
                data.finish()?;
            }
        }
        fs_err::write(path, self.proto.encode_to_vec()).map_err(io("failed to write model", path))
    }
}

fn dim_proto(d: &Dim) -> proto::Dimension {
    let value = match d {
        Dim::Fixed(n) => Some(proto::DimensionValue::DimValue(*n)),
        d if d.is_unknown() => None,
        Dim::Sym(s) => Some(proto::DimensionValue::DimParam(s.clone())),
    };
    proto::Dimension {
        value,
        denotation: None,
    }
}

fn attr_proto(name: &str, a: &Attr) -> proto::AttributeProto {
    let mut p = proto::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = Some(*i);
            p.r#type = Some(attribute_type::INT);
        }
        Attr::Float(f) => {
            p.f = Some(*f);
            p.r#type = Some(attribute_type::FLOAT);
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            p.r#type = Some(attribute_type::INTS);
        }
        Attr::String(s) => {
            p.s = Some(s.as_bytes().to_vec());
            p.r#type = Some(attribute_type::STRING);
        }
        Attr::Tensor(t) => {
            p.t = Some(t.to_proto(None));
            p.r#type = Some(attribute_type::TENSOR);
        }
    }
    p
}

impl Graph {
    fn value_info(&self, t: Tensor) -> proto::ValueInfoProto {
        let v = &self.values[t.index()];
        proto::ValueInfoProto {
            name: Some(v.name.clone()),
            r#type: Some(proto::TypeProto {
                tensor_type: Some(proto::TypeProtoTensor {
                    elem_type: Some(t.dtype().onnx_code()),
                    shape: Some(proto::TensorShapeProto {
                        dim: v.shape.iter().map(dim_proto).collect(),
                    }),
                }),
                denotation: None,
            }),
            doc_string: None,
        }
    }

    /// Which nodes the outputs need, walking back from them.
    fn live_nodes(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<Tensor> = self.outputs().to_vec();
        let mut seen = vec![false; self.values.len()];
        while let Some(t) = stack.pop() {
            if std::mem::replace(&mut seen[t.index()], true) {
                continue;
            }
            if let Some(p) = self.values[t.index()].producer
                && !std::mem::replace(&mut live[p], true)
            {
                stack.extend(self.nodes[p].inputs.iter().flatten());
            }
        }
        live
    }

    /// The `live` nodes, each after the producers of its inputs: in the order they were
    /// added, except that a node added later to feed an earlier one (a rewrite such as
    /// [`Graph::lower_frozen_products`]) moves just before the first node that reads it.
    fn emission_order(&self, live: &[bool]) -> Vec<usize> {
        let mut done = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(live.iter().filter(|&&l| l).count());
        for root in (0..self.nodes.len()).filter(|&i| live[i]) {
            // Depth first: (node, the first input slot not yet looked at).
            let mut stack = vec![(root, 0)];
            while let Some((i, slot)) = stack.pop() {
                if done[i] {
                    continue;
                }
                let inputs = &self.nodes[i].inputs;
                let pending = (slot..inputs.len()).find_map(|s| {
                    let producer = inputs[s].and_then(|t| self.values[t.index()].producer)?;
                    (!done[producer]).then_some((s, producer))
                });
                match pending {
                    Some((s, producer)) => {
                        stack.push((i, s + 1));
                        stack.push((producer, 0));
                    }
                    None => {
                        done[i] = true;
                        order.push(i);
                    }
                }
            }
        }
        order
    }

    /// Finishes the graph: nodes no output depends on are dropped, and the result is an ONNX
    /// model (opset 20, domain `ai.onnx`, plus pipe's CPU kernels when a backward rule used
    /// them, see [`super::Kernels`], and ONNX Runtime's `com.microsoft` for quantized weights) whose every output carries its type and rank.
    pub fn build(&self) -> Result<Model> {
        if self.outputs().is_empty() {
            return Err(Error::Build {
                node: self.name.clone(),
                message: "the graph has no outputs".into(),
            });
        }
        let live = self.live_nodes();
        let node = self
            .emission_order(&live)
            .into_iter()
            .map(|i| &self.nodes[i])
            .map(|n| proto::NodeProto {
                input: n
                    .inputs
                    .iter()
                    .map(|i| i.map_or_else(String::new, |t| self.name(t).to_string()))
                    .collect(),
                output: n
                    .outputs
                    .iter()
                    .map(|&t| self.name(t).to_string())
                    .collect(),
                name: Some(n.name.clone()),
                op_type: Some(n.op.to_string()),
                attribute: n.attrs.iter().map(|(k, a)| attr_proto(k, a)).collect(),
                doc_string: None,
                domain: (!n.domain.is_empty()).then(|| n.domain.to_string()),
            })
            .collect();
        let uses = |domain: &str| {
            self.nodes
                .iter()
                .zip(&live)
                .any(|(n, l)| *l && n.domain == domain)
        };
        let mut opset_import = vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }];
        for domain in [super::HOST_KERNELS_DOMAIN, super::MICROSOFT_DOMAIN] {
            if uses(domain) {
                opset_import.push(proto::OperatorSetIdProto {
                    domain: Some(domain.to_string()),
                    version: Some(1),
                });
            }
        }
        let graph = proto::GraphProto {
            node,
            name: Some(self.name.clone()),
            initializer: self
                .initializers
                .iter()
                .map(|(t, value)| {
                    let name = Some(self.name(*t).to_string());
                    match value {
                        Initializer::Inline(data) => data.to_proto(name),
                        Initializer::External(data) => data.to_proto(name),
                    }
                })
                .collect(),
            doc_string: None,
            input: self.inputs().iter().map(|&t| self.value_info(t)).collect(),
            output: self.outputs().iter().map(|&t| self.value_info(t)).collect(),
            value_info: vec![],
        };
        Ok(Model {
            proto: proto::ModelProto {
                ir_version: Some(ir_version(OPSET)),
                producer_name: Some("pipe-onnx".into()),
                producer_version: Some(env!("CARGO_PKG_VERSION").into()),
                domain: None,
                model_version: None,
                doc_string: None,
                graph: Some(graph),
                opset_import,
                metadata_props: vec![],
            },
        })
    }
}
