//! Frozen embedding tables read in the precision a checkpoint stores them in.

use std::collections::BTreeMap;

use super::{Attr, Graph, Tensor};
use crate::DType;

impl Graph {
    /// Declares each f32 input named in `stored` in its stored type (`bfloat16` or `float16`)
    /// where the graph reads it only as the table of `Gather`s (an embedding): each gather's
    /// rows are then widened to f32 by a `Cast`, which is exact, so every value downstream is
    /// what the f32 table gives. The table itself is fed as the checkpoint holds it, read in
    /// place ([`crate::HostTensor::half_shared`]): it takes no memory of its own, and only
    /// the rows batches look up are ever read.
    ///
    /// Only for inputs nothing differentiates (frozen weights). Returns the tables declared
    /// in their stored type, with it; other inputs are left as they are.
    pub fn gather_stored_tables(
        &mut self,
        stored: &BTreeMap<String, DType>,
    ) -> BTreeMap<String, DType> {
        let tables: Vec<(usize, DType)> = (0..self.inputs.len())
            .filter_map(|slot| {
                let t = self.inputs[slot];
                let &dtype = stored.get(self.name(t))?;
                let users = self.users(t);
                let gathered = t.dtype() == DType::F32
                    && matches!(dtype, DType::BF16 | DType::F16)
                    && !users.is_empty()
                    && users
                        .iter()
                        .all(|&(i, slot)| self.nodes[i].op == "Gather" && slot == 0);
                gathered.then_some((slot, dtype))
            })
            .collect();
        let mut done = BTreeMap::new();
        for (slot, dtype) in tables {
            let wide = self.inputs[slot];
            let narrow = Tensor { id: wide.id, dtype };
            for (node, _) in self.users(wide) {
                self.nodes[node].inputs[0] = Some(narrow);
                self.widen_output(node, dtype);
            }
            self.inputs[slot] = narrow;
            done.insert(self.name(narrow).to_string(), dtype);
        }
        done
    }

    /// Makes node `node` (a `Gather`) output its rows in `dtype` and a new `Cast` give its
    /// old f32 output, under the same name, from them.
    fn widen_output(&mut self, node: usize, dtype: DType) {
        let wide = self.nodes[node].outputs[0];
        let info = &self.values[wide.index()];
        let (name, shape) = (format!("{}.{dtype}", info.name), info.shape.clone());
        let rows = self.new_value(name, dtype, shape, Some(node), None);
        self.nodes[node].outputs[0] = rows;
        // A Cast with no output of its own yet: it takes over `wide`.
        let attrs = vec![("to", Attr::Int(i64::from(DType::F32.onnx_code())))];
        self.push_node("Cast", vec![Some(rows)], attrs, vec![]);
        let cast = self.nodes.len() - 1;
        self.nodes[cast].outputs = vec![wide];
        self.values[wide.index()].producer = Some(cast);
    }
}
