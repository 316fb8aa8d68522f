//! The model as TensorBoard's graph: one node per parameter and op, named by the scopes the
//! parameters carry (`Embedding`, `LSTM/layer_k`, `Dropout`, `Logits`, `Loss`, `Train`), with
//! the shapes of a `[batch, seq]` input, so the GRAPHS dashboard shows the architecture.

use super::CharRnn;
use crate::summary::GraphNode;

impl CharRnn {
    /// The model as graph nodes for TensorBoard, with the shapes of a `[batch, seq]` input.
    pub fn graph(&self, batch: usize, seq: usize) -> Vec<GraphNode> {
        let (v, e, h) = (
            self.dims.vocab as i64,
            self.dims.embed_dim as i64,
            self.dims.hidden as i64,
        );
        let (b, t) = (batch as i64, seq as i64);
        let mut nodes = vec![
            GraphNode::new("Inputs/chars", "Placeholder", &[], &[b, t]),
            GraphNode::new("Inputs/targets", "Placeholder", &[], &[b, t]),
            GraphNode::new("Embedding/weight", "VariableV2", &[], &[v, e]),
            GraphNode::new(
                "Embedding/lookup",
                "GatherV2",
                &["Embedding/weight", "Inputs/chars"],
                &[b, t, e],
            ),
        ];
        let mut prev = "Embedding/lookup".to_string();
        for k in 0..self.dims.layers {
            let in_dim = if k == 0 { e } else { h };
            nodes.extend(layer_nodes(k, &prev, in_dim, h, (b, t)));
            prev = format!("Dropout/layer_{k}");
        }
        nodes.extend([
            GraphNode::new("Logits/weight", "VariableV2", &[], &[v, h]),
            GraphNode::new("Logits/bias", "VariableV2", &[], &[v]),
            GraphNode::new(
                "Logits/matmul",
                "MatMul",
                &[&prev, "Logits/weight", "Logits/bias"],
                &[b * t, v],
            ),
            GraphNode::new(
                "Loss/cross_entropy",
                "SoftmaxCrossEntropyWithLogits",
                &["Logits/matmul", "Inputs/targets"],
                &[],
            ),
            GraphNode::new(
                "Accuracy/argmax_equal",
                "Mean",
                &["Logits/matmul", "Inputs/targets"],
                &[],
            ),
            GraphNode::new("Train/gradients", "Gradients", &["Loss/cross_entropy"], &[]),
            GraphNode::new(
                "Train/clip_by_global_norm",
                "ClipByGlobalNorm",
                &["Train/gradients"],
                &[],
            ),
            GraphNode::new(
                "Train/optimizer",
                "ApplyOptimizer",
                &["Train/clip_by_global_norm"],
                &[],
            ),
        ]);
        nodes
    }
}

/// The graph nodes of LSTM layer `k` (weights, projection, cell, dropout), fed by `prev`.
fn layer_nodes(k: usize, prev: &str, in_dim: i64, h: i64, (b, t): (i64, i64)) -> Vec<GraphNode> {
    let s = format!("LSTM/layer_{k}");
    let name = |part: &str| format!("{s}/{part}");
    vec![
        GraphNode::new(&name("weight_ih"), "VariableV2", &[], &[4 * h, in_dim]),
        GraphNode::new(&name("weight_hh"), "VariableV2", &[], &[4 * h, h]),
        GraphNode::new(&name("bias_ih"), "VariableV2", &[], &[4 * h]),
        GraphNode::new(&name("bias_hh"), "VariableV2", &[], &[4 * h]),
        GraphNode::new(
            &name("input_projection"),
            "MatMul",
            &[prev, &name("weight_ih"), &name("bias_ih"), &name("bias_hh")],
            &[b, t, 4 * h],
        ),
        GraphNode::new(
            &name("cell"),
            "LSTMBlock",
            &[&name("input_projection"), &name("weight_hh")],
            &[b, t, h],
        ),
        GraphNode::new(
            &format!("Dropout/layer_{k}"),
            "Dropout",
            &[&name("cell")],
            &[b, t, h],
        ),
    ]
}
