"""Reads a run directory with TensorBoard's own reader and prints what it sees as JSON.

Used by the Rust tests: if TensorBoard cannot read charlab's event files, this fails.
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import api_pb2, metadata


def plugin_content(acc, plugin):
    try:
        return acc.PluginTagToContent(plugin)
    except KeyError:
        return {}


def main(run_dir):
    acc = ea.EventAccumulator(
        run_dir,
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.GRAPH: 0},
    )
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "histograms": {}, "text": {}, "graph_nodes": [], "hparams": {}}
    for tag in tags.get("scalars", []):
        out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags.get("histograms", []):
        hs = acc.Histograms(tag)
        out["histograms"][tag] = [[h.step, h.histogram_value.num] for h in hs]
    text_tags = plugin_content(acc, "text")
    for tag in text_tags:
        out["text"][tag] = [
            [t.step, t.tensor_proto.string_val[0].decode("utf-8")] for t in acc.Tensors(tag)
        ]
    if tags.get("graph"):
        out["graph_nodes"] = [n.name for n in acc.Graph().node]
    content = plugin_content(acc, metadata.PLUGIN_NAME)
    hp = out["hparams"]
    if metadata.SESSION_START_INFO_TAG in content:
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        values = {}
        for k, v in start.hparams.items():
            kind = v.WhichOneof("kind")
            values[k] = getattr(v, kind)
        hp["start"] = {"hparams": values, "group_name": start.group_name}
    if metadata.SESSION_END_INFO_TAG in content:
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        hp["end"] = {"status": api_pb2.Status.Name(end.status)}
    if metadata.EXPERIMENT_TAG in content:
        exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        hp["experiment"] = {
            "hparams": [h.name for h in exp.hparam_infos],
            "metrics": [m.name.tag for m in exp.metric_infos],
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
