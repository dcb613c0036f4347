//! `driftwatch model inspect`: what is inside an ONNX file — inputs and
//! outputs, each layer's parameters, and for convolutions how many weights a
//! fully connected layer between the same input and output would need
//! (parameter sharing made visible) — read straight from the protobuf, so it
//! works without ONNX Runtime.
//!
//! The wire format is protobuf (field numbers from onnx/onnx.proto3); only
//! the fields used here are decoded, others are skipped. Every read is
//! bounds-checked: a file that is not ONNX gives an error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ModelError;

/// A protobuf field value.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

/// Iterates the (field number, value) pairs of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = (|| {
            let tag = varint(self.buf, &mut self.pos)?;
            let (field, wt) = (tag >> 3, tag & 7);
            let take = |pos: &mut usize, n: usize| -> Result<&'a [u8], String> {
                let end = pos
                    .checked_add(n)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated field")?;
                let s = &self.buf[*pos..end];
                *pos = end;
                Ok(s)
            };
            let v = match wt {
                0 => Wire::Varint(varint(self.buf, &mut self.pos)?),
                1 => {
                    take(&mut self.pos, 8)?;
                    Wire::Fixed64
                }
                2 => {
                    let n = varint(self.buf, &mut self.pos)?;
                    Wire::Bytes(take(&mut self.pos, usize::try_from(n).map_err(|_| "length overflow")?)?)
                }
                5 => {
                    take(&mut self.pos, 4)?;
                    Wire::Fixed32
                }
                w => return Err(format!("unsupported wire type {w} (field {field})")),
            };
            if field == 0 {
                return Err("field number 0".into());
            }
            Ok((field, v))
        })();
        if r.is_err() {
            self.pos = self.buf.len();
        }
        Some(r)
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, pos: 0 }
}

fn text(w: &Wire) -> String {
    match w {
        Wire::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// Repeated int64, packed or not.
fn push_ints(w: &Wire, out: &mut Vec<i64>) -> Result<(), String> {
    match w {
        Wire::Varint(v) => out.push(*v as i64),
        Wire::Bytes(b) => {
            let mut p = 0;
            while p < b.len() {
                out.push(varint(b, &mut p)? as i64);
            }
        }
        _ => return Err("expected integers".into()),
    }
    Ok(())
}

/// Shape of a value: a size per dimension, `None` where symbolic or unknown.
pub type Shape = Vec<Option<i64>>;

#[derive(Default)]
struct Tensor {
    name: String,
    dims: Vec<i64>,
    int64: Vec<i64>,
    raw: Vec<u8>,
    data_type: i64,
}

fn tensor(buf: &[u8]) -> Result<Tensor, String> {
    let mut t = Tensor::default();
    for f in fields(buf) {
        match f? {
            (1, w) => push_ints(&w, &mut t.dims)?,
            (2, Wire::Varint(v)) => t.data_type = v as i64,
            (7, w) => push_ints(&w, &mut t.int64)?,
            (8, w) => t.name = text(&w),
            (9, Wire::Bytes(b)) => t.raw = b.to_vec(),
            _ => {}
        }
    }
    Ok(t)
}

impl Tensor {
    fn elements(&self) -> u64 {
        self.dims.iter().map(|d| (*d).max(0) as u64).product()
    }
    /// Int64 contents (for Reshape's shape input).
    fn ints(&self) -> Vec<i64> {
        if !self.int64.is_empty() {
            return self.int64.clone();
        }
        if self.data_type == 7 {
            return self
                .raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
        }
        vec![]
    }
}

/// A graph input or output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    /// Element type (`float32`, `int64`, …).
    pub dtype: String,
    /// Dimension sizes; symbolic ones by name (`N`), unknown as `?`.
    pub shape: Vec<String>,
}

fn dtype_name(t: i64) -> &'static str {
    match t {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => "other",
    }
}

fn value_info(buf: &[u8]) -> Result<(ValueInfo, Shape), String> {
    let mut v = ValueInfo {
        name: String::new(),
        dtype: "unknown".into(),
        shape: vec![],
    };
    let mut shape = vec![];
    for f in fields(buf) {
        match f? {
            (1, w) => v.name = text(&w),
            (2, Wire::Bytes(ty)) => {
                for f in fields(ty) {
                    if let (1, Wire::Bytes(tt)) = f? {
                        for f in fields(tt) {
                            match f? {
                                (1, Wire::Varint(e)) => v.dtype = dtype_name(e as i64).into(),
                                (2, Wire::Bytes(sh)) => {
                                    for f in fields(sh) {
                                        if let (1, Wire::Bytes(dim)) = f? {
                                            let (mut val, mut param) = (None, None);
                                            for f in fields(dim) {
                                                match f? {
                                                    (1, Wire::Varint(d)) => val = Some(d as i64),
                                                    (2, w) => param = Some(text(&w)),
                                                    _ => {}
                                                }
                                            }
                                            v.shape.push(match (val, &param) {
                                                (Some(d), _) => d.to_string(),
                                                (None, Some(p)) if !p.is_empty() => p.clone(),
                                                _ => "?".into(),
                                            });
                                            shape.push(val);
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok((v, shape))
}

#[derive(Default)]
struct Node {
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    ints: HashMap<String, Vec<i64>>,
    strings: HashMap<String, String>,
}

fn node(buf: &[u8]) -> Result<Node, String> {
    let mut n = Node::default();
    for f in fields(buf) {
        match f? {
            (1, w) => n.inputs.push(text(&w)),
            (2, w) => n.outputs.push(text(&w)),
            (3, w) => n.name = text(&w),
            (4, w) => n.op = text(&w),
            (5, Wire::Bytes(a)) => {
                let (mut name, mut ints, mut s) = (String::new(), vec![], None);
                for f in fields(a) {
                    match f? {
                        (1, w) => name = text(&w),
                        (3, w) | (8, w) => push_ints(&w, &mut ints)?,
                        (4, w) => s = Some(text(&w)),
                        _ => {}
                    }
                }
                if let Some(s) = s {
                    n.strings.insert(name.clone(), s);
                }
                n.ints.insert(name, ints);
            }
            _ => {}
        }
    }
    Ok(n)
}

/// One layer (graph node) of the model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op_type: String,
    /// Learned or constant values it holds (its initializer inputs), each with its dims.
    pub tensors: Vec<(String, Vec<i64>)>,
    pub parameters: u64,
    pub input_shape: Option<Vec<i64>>,
    pub output_shape: Option<Vec<i64>>,
    /// Convolutions: weights a fully connected layer from the same input to
    /// the same output would need (input elements × output elements, per example).
    pub dense_equivalent_weights: Option<u64>,
}

/// What `model inspect` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Inspection {
    pub path: PathBuf,
    pub ir_version: i64,
    /// (domain, version); the default domain is `ai.onnx`.
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Nodes in graph order (nodes without parameters included).
    pub layers: Vec<Layer>,
    pub total_parameters: u64,
    pub metadata: BTreeMap<String, String>,
}

/// Reads an ONNX file.
pub fn inspect(path: &Path) -> Result<Inspection, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::File {
        path: path.into(),
        detail: format!("cannot read: {e}"),
    })?;
    parse(path, &bytes).map_err(|detail| ModelError::Invalid {
        path: path.into(),
        detail,
    })
}

/// Parses ONNX bytes.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Inspection, String> {
    let (mut out, graph) = model(path, bytes)?;
    let Graph {
        nodes,
        inits,
        mut shapes,
        inputs,
        outputs,
    } = Graph::read(graph)?;
    // Initializers listed as inputs (older exporters) are not inputs to feed.
    out.inputs = inputs.into_iter().filter(|v| !inits.contains_key(&v.name)).collect();
    out.outputs = outputs;
    // An initializer shared by several nodes counts once.
    let mut counted = std::collections::HashSet::new();
    for n in &nodes {
        let layer = layer(n, &mut shapes, &inits, &mut counted);
        out.total_parameters += layer.parameters;
        out.layers.push(layer);
    }
    Ok(out)
}

/// The ModelProto's own fields (its graph's bytes apart), with no inputs,
/// outputs or layers yet.
fn model<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Inspection, &'a [u8]), String> {
    let mut out = Inspection {
        path: path.into(),
        ir_version: 0,
        opsets: vec![],
        producer: String::new(),
        inputs: vec![],
        outputs: vec![],
        layers: vec![],
        total_parameters: 0,
        metadata: BTreeMap::new(),
    };
    let mut graph = None;
    for f in fields(bytes) {
        match f.map_err(|e| format!("not an ONNX protobuf: {e}"))? {
            (1, Wire::Varint(v)) => out.ir_version = v as i64,
            (2, w) => out.producer = text(&w),
            (3, w) => {
                let v = text(&w);
                if !v.is_empty() {
                    out.producer = format!("{} {v}", out.producer);
                }
            }
            (7, Wire::Bytes(g)) => graph = Some(g),
            // OperatorSetIdProto: domain (1), version (2).
            (8, Wire::Bytes(o)) => {
                let [domain, version] = first_two(o)?;
                let domain = domain.map(|w| text(&w)).filter(|d| !d.is_empty());
                let version = match version {
                    Some(Wire::Varint(v)) => v as i64,
                    _ => 0,
                };
                out.opsets.push((domain.unwrap_or_else(|| "ai.onnx".into()), version));
            }
            // StringStringEntryProto: key (1), value (2).
            (14, Wire::Bytes(kv)) => {
                let [k, v] = first_two(kv)?.map(|w| w.map(|w| text(&w)).unwrap_or_default());
                out.metadata.insert(k, v);
            }
            _ => {}
        }
    }
    let graph = graph.ok_or("no graph in the file: not an ONNX model")?;
    if out.ir_version == 0 {
        return Err("no ir_version: not an ONNX model".into());
    }
    Ok((out, graph))
}
/// Fields 1 and 2 of a small message (the last of each, as protobuf reads
/// a repeated scalar field).
fn first_two(buf: &[u8]) -> Result<[Option<Wire<'_>>; 2], String> {
    let mut two = [None, None];
    for f in fields(buf) {
        match f? {
            (1, w) => two[0] = Some(w),
            (2, w) => two[1] = Some(w),
            _ => {}
        }
    }
    Ok(two)
}

/// A GraphProto's parts that `parse` reads.
struct Graph {
    nodes: Vec<Node>,
    /// Initializers (weights, constants) by name.
    inits: HashMap<String, Tensor>,
    /// Known shapes by value name: initializers', declared values' and
    /// the graph inputs'.
    shapes: HashMap<String, Shape>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
}

impl Graph {
    fn read(graph: &[u8]) -> Result<Self, String> {
        let (mut nodes, mut inits) = (vec![], HashMap::new());
        let mut shapes: HashMap<String, Shape> = HashMap::new();
        let (mut ins, mut outs) = (vec![], vec![]);
        for f in fields(graph) {
            match f? {
                (1, Wire::Bytes(b)) => nodes.push(node(b)?),
                (5, Wire::Bytes(b)) => {
                    let t = tensor(b)?;
                    shapes.insert(t.name.clone(), t.dims.iter().map(|d| Some(*d)).collect());
                    inits.insert(t.name.clone(), t);
                }
                (11, Wire::Bytes(b)) => ins.push(value_info(b)?),
                (12, Wire::Bytes(b)) => outs.push(value_info(b)?),
                (13, Wire::Bytes(b)) => {
                    let (v, s) = value_info(b)?;
                    shapes.insert(v.name, s);
                }
                _ => {}
            }
        }
        for (v, s) in &ins {
            shapes.entry(v.name.clone()).or_insert_with(|| s.clone());
        }
        Ok(Self {
            nodes,
            inits,
            shapes,
            inputs: ins.into_iter().map(|(v, _)| v).collect(),
            outputs: outs.into_iter().map(|(v, _)| v).collect(),
        })
    }
}

/// Node `n` as a layer: its output shape (inferred where the graph does not
/// declare it, and then added to `shapes` for the nodes after it) and its
/// parameters (initializers not in `counted` yet, which it adds).
fn layer(
    n: &Node,
    shapes: &mut HashMap<String, Shape>,
    inits: &HashMap<String, Tensor>,
    counted: &mut std::collections::HashSet<String>,
) -> Layer {
    let input = n.inputs.first().and_then(|i| shapes.get(i)).cloned();
    let inferred = infer(n, shapes, inits);
    if let (Some(o), Some(name)) = (&inferred, n.outputs.first()) {
        shapes.entry(name.clone()).or_insert_with(|| o.clone());
    }
    let out_shape = n.outputs.first().and_then(|o| shapes.get(o)).cloned();
    let held = || n.inputs.iter().filter_map(|i| inits.get(i));
    let tensors = held().map(|t| (t.name.clone(), t.dims.clone())).collect();
    let parameters = held()
        .filter(|t| counted.insert(t.name.clone()))
        .map(Tensor::elements)
        .sum();
    let known = |s: &Option<Shape>| s.as_ref().map(|s| s.iter().map(|d| d.unwrap_or(-1)).collect());
    // Per example: every dimension but the batch one.
    let per_example = |s: &Option<Shape>| -> Option<u64> {
        let s = s.as_ref()?;
        s.iter()
            .skip(1)
            .map(|d| d.filter(|d| *d > 0).map(|d| d as u64))
            .product()
    };
    let dense = (n.op == "Conv")
        .then(|| Some(per_example(&input)? * per_example(&out_shape)?))
        .flatten();
    Layer {
        name: match n.name.is_empty() {
            true => n.outputs.first().cloned().unwrap_or_default(),
            false => n.name.clone(),
        },
        op_type: n.op.clone(),
        tensors,
        parameters,
        input_shape: known(&input),
        output_shape: known(&out_shape),
        dense_equivalent_weights: dense,
    }
}

/// Output shape of common operators; `None` when not known.
fn infer(n: &Node, shapes: &HashMap<String, Shape>, inits: &HashMap<String, Tensor>) -> Option<Shape> {
    let s = |i: usize| n.inputs.get(i).and_then(|x| shapes.get(x)).cloned();
    let attr = |k: &str| n.ints.get(k).cloned();
    match n.op.as_str() {
        "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" | "Elu" | "Softmax" | "LogSoftmax" | "BatchNormalization"
        | "Dropout" | "Identity" | "Clip" | "Cast" => s(0),
        "Add" | "Sub" | "Mul" | "Div" => Some(broadcast(&s(0)?, &s(1)?)),
        "Conv" | "MaxPool" | "AveragePool" => windowed(n, &s(0)?, s(1)),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = s(0)?;
            Some(
                x.iter()
                    .take(2)
                    .copied()
                    .chain(std::iter::repeat_n(Some(1), x.len().saturating_sub(2)))
                    .collect(),
            )
        }
        "Flatten" => {
            let x = s(0)?;
            let axis = attr("axis").and_then(|v| v.first().copied()).unwrap_or(1);
            let axis = if axis < 0 { x.len() as i64 + axis } else { axis } as usize;
            let prod = |d: &[Option<i64>]| d.iter().try_fold(1i64, |a, b| b.map(|b| a * b));
            Some(vec![prod(x.get(..axis)?), prod(x.get(axis..)?)])
        }
        "Gemm" => {
            let (a, b) = (s(0)?, s(1)?);
            let ta = attr("transA").and_then(|v| v.first().copied()).unwrap_or(0) == 1;
            let tb = attr("transB").and_then(|v| v.first().copied()).unwrap_or(0) == 1;
            Some(vec![
                if ta { *a.get(1)? } else { *a.first()? },
                if tb { *b.first()? } else { *b.get(1)? },
            ])
        }
        "MatMul" => {
            let (mut a, b) = (s(0)?, s(1)?);
            let last = *b.last()?;
            *a.last_mut()? = last;
            Some(a)
        }
        "Reshape" => reshaped(&s(0)?, inits.get(n.inputs.get(1)?)?.ints()),
        _ => None,
    }
}

/// Numpy broadcasting of two shapes (an unknown dimension against 1 stays
/// unknown; against another, the first's).
fn broadcast(a: &Shape, b: &Shape) -> Shape {
    let r = a.len().max(b.len());
    let pad = |x: &Shape| {
        let mut v = vec![Some(1); r - x.len()];
        v.extend(x.iter().copied());
        v
    };
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(x, y)| match (x, y) {
            (Some(1), y) => *y,
            (x, _) => *x,
        })
        .collect()
}

/// Output shape of a convolution or pooling of `x` (N, C, spatial…);
/// `w`: a convolution's weight shape (M, C/group, kernel…).
fn windowed(n: &Node, x: &Shape, w: Option<Shape>) -> Option<Shape> {
    let attr = |k: &str| n.ints.get(k).filter(|v| !v.is_empty()).cloned();
    if x.len() < 3 {
        return None;
    }
    let spatial = x.len() - 2;
    let (channels, kernel) = if n.op == "Conv" {
        let w = w?;
        (w.first().copied().flatten(), w.get(2..)?.to_vec())
    } else {
        (x[1], attr("kernel_shape")?.into_iter().map(Some).collect())
    };
    let kernel: Vec<i64> = match attr("kernel_shape") {
        Some(k) => k,
        None => kernel.into_iter().collect::<Option<Vec<_>>>()?,
    };
    let strides = attr("strides").unwrap_or(vec![1; spatial]);
    let dil = attr("dilations").unwrap_or(vec![1; spatial]);
    let pads = attr("pads").unwrap_or(vec![0; 2 * spatial]);
    let same = n.strings.get("auto_pad").is_some_and(|p| p.starts_with("SAME"));
    let mut out = vec![x[0], channels];
    for i in 0..spatial {
        let (k, st, d) = (*kernel.get(i)?, *strides.get(i)?, *dil.get(i)?);
        out.push(x[2 + i].and_then(|h| {
            if st <= 0 {
                None
            } else if same {
                Some((h + st - 1) / st)
            } else {
                let p = pads.get(i)? + pads.get(i + spatial)?;
                Some((h + p - d * (k - 1) - 1) / st + 1)
            }
        }));
    }
    Some(out)
}

/// `x` reshaped to `target` (0: keep that dimension; −1: what is left).
fn reshaped(x: &Shape, target: Vec<i64>) -> Option<Shape> {
    let total: Option<i64> = x.iter().try_fold(1i64, |a, b| b.map(|b| a * b));
    let mut out: Shape = target
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            0 => x.get(i).copied().flatten(),
            -1 => None,
            d => Some(*d),
        })
        .collect();
    if let (Some(total), Some(pos)) = (total, target.iter().position(|d| *d == -1)) {
        let rest: Option<i64> = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .try_fold(1i64, |a, (_, b)| b.map(|b| a * b));
        out[pos] = rest.filter(|r| *r > 0).map(|r| total / r);
    }
    Some(out)
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(d: &Option<Vec<i64>>) -> String {
    d.as_ref().map_or("?".into(), |d| {
        format!(
            "[{}]",
            d.iter()
                .map(|x| if *x < 0 { "N".into() } else { x.to_string() })
                .collect::<Vec<_>>()
                .join(",")
        )
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model     {}", self.path.display())?;
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
        writeln!(
            f,
            "format    ONNX IR {}, opset {}, by {}",
            self.ir_version,
            opsets.join(", "),
            self.producer
        )?;
        for (what, list) in [("input ", &self.inputs), ("output", &self.outputs)] {
            for v in list {
                writeln!(f, "{what}    {:<12} {:<8} [{}]", v.name, v.dtype, v.shape.join(", "))?;
            }
        }
        writeln!(
            f,
            "\n{:<14} {:<10} {:>10}  {:<14} {:<14} fully connected instead",
            "layer", "op", "parameters", "input", "output"
        )?;
        for l in &self.layers {
            let dense = l.dense_equivalent_weights.map_or(String::new(), |d| {
                let own: u64 = l
                    .tensors
                    .first()
                    .map_or(1, |(_, t)| t.iter().map(|x| (*x).max(0) as u64).product());
                format!(
                    "{} weights ({:.0}× the {} shared ones)",
                    group(d),
                    d as f64 / own.max(1) as f64,
                    group(own)
                )
            });
            writeln!(
                f,
                "{:<14} {:<10} {:>10}  {:<14} {:<14} {dense}",
                l.name,
                l.op_type,
                if l.parameters == 0 {
                    "-".into()
                } else {
                    group(l.parameters)
                },
                dims(&l.input_shape),
                dims(&l.output_shape),
            )?;
        }
        writeln!(f, "{:<14} {:<10} {:>10}", "total", "", group(self.total_parameters))?;
        if !self.metadata.is_empty() {
            writeln!(f, "\nmetadata")?;
            for (k, v) in &self.metadata {
                writeln!(f, "  {k:<20} {v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digits_cnn_is_read_as_trained() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_cnn.onnx");
        let m = inspect(&p).unwrap();
        assert_eq!(m.inputs.len(), 1);
        assert_eq!(m.inputs[0].name, "pixels");
        assert_eq!(m.inputs[0].shape, ["N", "1", "8", "8"]);
        let outs: Vec<_> = m
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.shape.last().cloned()))
            .collect();
        assert_eq!(outs, [("embedding", Some("32".into())), ("logits", Some("10".into()))]);
        let conv1 = m.layers.iter().find(|l| l.name == "conv1").unwrap();
        // 8 filters of 1×3×3 plus 8 biases, applied at all 64 positions.
        assert_eq!(conv1.parameters, 8 * 9 + 8);
        assert_eq!(conv1.output_shape, Some(vec![-1, 8, 8, 8]));
        assert_eq!(conv1.dense_equivalent_weights, Some(64 * 512));
        let conv2 = m.layers.iter().find(|l| l.name == "conv2").unwrap();
        assert_eq!(conv2.parameters, 16 * 8 * 9 + 16);
        assert_eq!(conv2.output_shape, Some(vec![-1, 16, 4, 4]));
        assert_eq!(conv2.dense_equivalent_weights, Some(512 * 256));
        let fc1 = m.layers.iter().find(|l| l.name == "fc1").unwrap();
        assert_eq!(
            (fc1.parameters, fc1.output_shape.clone()),
            (256 * 32 + 32, Some(vec![-1, 32]))
        );
        // + the 1/16 input scale constant.
        assert_eq!(m.total_parameters, 80 + 1168 + 8224 + 330 + 1);
        assert!(m.metadata.contains_key("test_accuracy"));
        let text = m.to_string();
        assert!(text.contains("conv1") && text.contains("32,768 weights"), "{text}");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut seed = 1u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            assert!(parse(Path::new("x"), &bytes).is_err());
        }
        // A real model cut short anywhere is also an error, not a panic.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_cnn.onnx");
        let bytes = std::fs::read(p).unwrap();
        for cut in (0..bytes.len()).step_by(97) {
            let _ = parse(Path::new("x"), &bytes[..cut]);
        }
        let e = parse(Path::new("x"), b"name: not a model\n").unwrap_err();
        assert!(e.contains("not an ONNX"), "{e}");
    }

    /// A protobuf field of bytes (wire type 2).
    fn bytes_field(number: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    /// A TensorProto with `dims` (each one byte) and `name`.
    fn initializer(name: &str, dims: &[u8]) -> Vec<u8> {
        let mut t: Vec<u8> = dims.iter().flat_map(|&d| [1 << 3, d]).collect();
        t.extend(bytes_field(8, name.as_bytes()));
        bytes_field(5, &t)
    }

    #[test]
    fn a_conv_with_a_one_dimensional_weight_has_no_output_shape() {
        // Conv(x: 1×1×4×4, w: [3]): a weight no convolution has, which
        // shape inference once sliced from its third dimension on.
        let mut node = vec![];
        for (field, v) in [(1, "x"), (1, "w"), (2, "y"), (3, "conv"), (4, "Conv")] {
            node.extend(bytes_field(field, v.as_bytes()));
        }
        let mut graph = bytes_field(1, &node);
        graph.extend(initializer("x", &[1, 1, 4, 4]));
        graph.extend(initializer("w", &[3]));
        let mut model = vec![1 << 3, 8]; // ir_version 8
        model.extend(bytes_field(7, &graph));
        let m = parse(Path::new("x"), &model).unwrap();
        let conv = &m.layers[0];
        assert_eq!(
            (conv.op_type.as_str(), conv.input_shape.clone()),
            ("Conv", Some(vec![1, 1, 4, 4]))
        );
        assert_eq!((conv.output_shape.clone(), conv.parameters), (None, 16 + 3));
    }
}
