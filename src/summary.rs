//! TensorBoard event files. tensorboard-rs gives the record framing (`RecordWriter`, masked
//! CRC32C) and the scalar/histogram builders, tensorboard-proto the message types; charlab's own
//! writer sits on top because tensorboard-rs's `SummaryWriter` panics on I/O errors, flushes only
//! from a background thread and gives two writers started in the same second the same file name.
//! Here every write returns a `Result`, the file name is unique per writer, and the buffer is
//! flushed at least every 10 s (and whenever the trainer asks, e.g. at each evaluation) so curves
//! show up live. This module knows nothing about models: it takes names, numbers, text and nodes.

use crate::error::{Error, IoContext, Result};
use protobuf::well_known_types::{ListValue, Value};
use protobuf::{Message, RepeatedField};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tensorboard_proto::api::{
    DataType as HpType, Experiment, HParamInfo, Interval, MetricInfo, MetricName, Status,
};
use tensorboard_proto::attr_value::{AttrValue, AttrValue_ListValue};
use tensorboard_proto::event::{Event, SessionLog, SessionLog_SessionStatus};
use tensorboard_proto::graph::GraphDef;
use tensorboard_proto::layout::{Category, Chart, Layout, MultilineChartContent};
use tensorboard_proto::node_def::NodeDef;
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};
use tensorboard_proto::plugin_text::TextPluginData;
use tensorboard_proto::summary::{Summary, SummaryMetadata, SummaryMetadata_PluginData};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::{TensorShapeProto, TensorShapeProto_Dim};
use tensorboard_proto::types::DataType;
use tensorboard_proto::versions::VersionDef;
use tensorboard_rs::record_writer::RecordWriter;

/// Longest time buffered events wait before reaching the file.
const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// A node of the model graph, as TensorBoard's graph dashboard shows it. Slashes in `name` make
/// collapsible scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub shape: Vec<i64>,
}

impl GraphNode {
    pub fn new(name: &str, op: &str, inputs: &[&str], shape: &[i64]) -> Self {
        GraphNode {
            name: name.into(),
            op: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            shape: shape.to_vec(),
        }
    }
}

/// A custom-scalars chart: its title and the tag regexes drawn in it.
pub type LayoutChart<'a> = (&'a str, Vec<&'a str>);

/// A hyperparameter value for the HParams dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum HValue {
    Num(f64),
    Str(String),
    Bool(bool),
}

/// The domain of a hyperparameter, for the `_hparams_/experiment` summary.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    Interval(f64, f64),
    Discrete(Vec<HValue>),
}

/// A hyperparameter as the `_hparams_/experiment` summary declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct HParamDecl {
    pub name: String,
    pub domain: Option<Domain>,
    pub ty: HpType,
    /// True for a key whose value differs between the runs (a swept key): TensorBoard sorts
    /// these first and shows them as the table's default columns.
    pub differs: bool,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Success,
    Failure,
    Running,
    Unknown,
}

static WRITERS: AtomicU64 = AtomicU64::new(0);

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event file writer.
pub struct EventWriter {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
    /// A second handle on the file, for fsync (the `RecordWriter` owns the buffered one).
    file: File,
    last_flush: Instant,
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let host = crate::host::hostname();
        let n = WRITERS.fetch_add(1, Ordering::Relaxed);
        // TensorBoard reads a directory's event files in name order, and a resume's purge only
        // works if its file comes after the one it purges: the name starts with the creation
        // time to the microsecond. The pid and a per-process counter make it unique.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.{:06}.{host}.{}.{n}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id()
        ));
        let file = File::options()
            .create_new(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        let sync_handle = file.try_clone().at(&path)?;
        let mut w = EventWriter {
            records: RecordWriter::new(BufWriter::with_capacity(1 << 16, file)),
            file: sync_handle,
            path,
            last_flush: Instant::now(),
        };
        let mut ev = Event::new();
        ev.set_wall_time(now_secs());
        ev.set_file_version("brain.Event:2".into());
        w.write_event(ev)?;
        w.flush()?;
        Ok(w)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, ev: Event) -> Result<()> {
        let bytes = ev.write_to_bytes().map_err(|e| Error::Run {
            path: self.path.clone(),
            message: format!("encoding an event: {e}"),
        })?;
        self.records.write(&bytes).at(&self.path)?;
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    fn write_summary(&mut self, step: u64, summary: Summary) -> Result<()> {
        let mut ev = Event::new();
        ev.set_wall_time(now_secs());
        ev.set_step(step as i64);
        ev.set_summary(summary);
        self.write_event(ev)
    }

    /// Pushes buffered events to the OS, so TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.records.flush().at(&self.path)?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Flushes and fsyncs: after this the events survive a crash (called at checkpoints).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data().at(&self.path)
    }

    /// A scalar point.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.write_summary(step, tensorboard_rs::summary::scalar(tag, value as f32))
    }

    /// A histogram of `values` (64 equal-width buckets between min and max; non-finite values
    /// are left out so one NaN does not hide the distribution).
    pub fn histogram(&mut self, tag: &str, step: u64, values: &[f32]) -> Result<()> {
        let finite: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        if finite.is_empty() {
            return Ok(());
        }
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (sum, sum_sq) = finite
            .iter()
            .fold((0.0, 0.0), |(s, q), &v| (s + v, q + v * v));
        const BUCKETS: usize = 64;
        let width = (max - min) / BUCKETS as f64;
        let (limits, counts) = if width > 0.0 {
            let mut counts = vec![0.0; BUCKETS];
            for &v in &finite {
                let i = (((v - min) / width) as usize).min(BUCKETS - 1);
                counts[i] += 1.0;
            }
            let limits: Vec<f64> = (1..=BUCKETS).map(|i| min + width * i as f64).collect();
            (limits, counts)
        } else {
            (vec![max], vec![finite.len() as f64])
        };
        let summary = tensorboard_rs::summary::histogram_raw(
            tag,
            min,
            max,
            finite.len() as f64,
            sum,
            sum_sq,
            &limits,
            &counts,
        );
        self.write_summary(step, summary)
    }

    /// A text sample (text plugin: a rank-0 DT_STRING tensor; TensorBoard renders markdown).
    pub fn text(&mut self, tag: &str, step: u64, text: &str) -> Result<()> {
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_STRING);
        tensor.set_tensor_shape(TensorShapeProto::new());
        tensor.set_string_val(RepeatedField::from_vec(vec![text.as_bytes().to_vec()]));
        let content = TextPluginData::new().write_to_bytes().unwrap_or_default();
        self.write_summary(step, plugin_value(tag, "text", content, tensor))
    }

    /// The model graph, written once.
    pub fn graph(&mut self, nodes: &[GraphNode]) -> Result<()> {
        let mut graph = GraphDef::new();
        for n in nodes {
            let mut node = NodeDef::new();
            node.set_name(n.name.clone());
            node.set_op(n.op.clone());
            node.set_input(RepeatedField::from_vec(n.inputs.clone()));
            let mut shape = TensorShapeProto::new();
            shape.set_dim(RepeatedField::from_vec(
                n.shape
                    .iter()
                    .map(|&s| {
                        let mut d = TensorShapeProto_Dim::new();
                        d.set_size(s);
                        d
                    })
                    .collect(),
            ));
            let mut list = AttrValue_ListValue::new();
            list.set_shape(RepeatedField::from_vec(vec![shape]));
            let mut attr = AttrValue::new();
            attr.set_list(list);
            node.mut_attr().insert("_output_shapes".into(), attr);
            graph.mut_node().push(node);
        }
        let mut versions = VersionDef::new();
        versions.set_producer(22);
        graph.set_versions(versions);
        let bytes = graph.write_to_bytes().map_err(|e| Error::Run {
            path: self.path.clone(),
            message: format!("encoding the graph: {e}"),
        })?;
        let mut ev = Event::new();
        ev.set_wall_time(now_secs());
        ev.set_graph_def(bytes);
        self.write_event(ev)
    }

    /// A custom-scalars layout: categories of multi-line charts, each chart a list of tag
    /// regexes drawn together (e.g. train and val loss in one chart per run).
    pub fn custom_scalars(&mut self, categories: &[(&str, Vec<LayoutChart>)]) -> Result<()> {
        let mut layout = Layout::new();
        for (title, charts) in categories {
            let mut cat = Category::new();
            cat.set_title(title.to_string());
            for (chart_title, tags) in charts {
                let mut content = MultilineChartContent::new();
                content.set_tag(RepeatedField::from_vec(
                    tags.iter().map(|t| t.to_string()).collect(),
                ));
                let mut chart = Chart::new();
                chart.set_title(chart_title.to_string());
                chart.set_multiline(content);
                cat.mut_chart().push(chart);
            }
            layout.mut_category().push(cat);
        }
        let bytes = layout.write_to_bytes().map_err(|e| Error::Run {
            path: self.path.clone(),
            message: format!("encoding the layout: {e}"),
        })?;
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_STRING);
        tensor.set_tensor_shape(TensorShapeProto::new());
        tensor.set_string_val(RepeatedField::from_vec(vec![bytes]));
        self.write_summary(
            0,
            plugin_value(
                "custom_scalars__config__",
                "custom_scalars",
                Vec::new(),
                tensor,
            ),
        )
    }

    /// Marks a restart at `step`: TensorBoard drops this run's events at steps ≥ `step` that
    /// were written before (the stale tail after the last checkpoint; PyTorch's purge_step).
    pub fn purge_from(&mut self, step: u64) -> Result<()> {
        let mut log = SessionLog::new();
        log.set_status(SessionLog_SessionStatus::START);
        let mut ev = Event::new();
        ev.set_wall_time(now_secs());
        ev.set_step(step as i64);
        ev.set_session_log(log);
        self.write_event(ev)
    }

    /// `_hparams_/experiment`: declares the hyperparameters (with domains) and the metrics, so the
    /// HPARAMS dashboard shows every run's values beside its final metrics.
    pub fn hparams_experiment(&mut self, hparams: &[HParamDecl], metrics: &[&str]) -> Result<()> {
        let mut exp = Experiment::new();
        exp.set_time_created_secs(now_secs());
        for h in hparams {
            let mut info = HParamInfo::new();
            info.set_name(h.name.clone());
            info.set_field_type(h.ty);
            if h.differs {
                // `HParamInfo.differs` is field 7 (bool), newer than tensorboard-proto's copy of
                // the message, so it goes on the wire as a known-to-TensorBoard unknown field.
                info.mut_unknown_fields().add_varint(7, 1);
            }
            match &h.domain {
                Some(Domain::Interval(lo, hi)) => {
                    let mut iv = Interval::new();
                    iv.set_min_value(*lo);
                    iv.set_max_value(*hi);
                    info.set_domain_interval(iv);
                }
                Some(Domain::Discrete(values)) => {
                    let mut list = ListValue::new();
                    list.set_values(RepeatedField::from_vec(
                        values.iter().map(to_value).collect(),
                    ));
                    info.set_domain_discrete(list);
                }
                None => {}
            }
            exp.mut_hparam_infos().push(info);
        }
        for m in metrics {
            let mut name = MetricName::new();
            name.set_group(String::new());
            name.set_tag(m.to_string());
            let mut info = MetricInfo::new();
            info.set_name(name);
            exp.mut_metric_infos().push(info);
        }
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        data.set_experiment(exp);
        self.hparams_value("_hparams_/experiment", data)
    }

    /// `_hparams_/session_start_info`: this run's hyperparameter values. Runs with the same
    /// `group` are one row in the dashboard (e.g. seeds of one configuration).
    pub fn session_start(&mut self, hparams: &[(String, HValue)], group: &str) -> Result<()> {
        let mut info = SessionStartInfo::new();
        let map: HashMap<String, Value> = hparams
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect();
        info.set_hparams(map);
        info.set_group_name(group.to_string());
        info.set_start_time_secs(now_secs());
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        data.set_session_start_info(info);
        self.hparams_value("_hparams_/session_start_info", data)
    }

    /// `_hparams_/session_end_info`: how the run ended.
    pub fn session_end(&mut self, status: SessionStatus) -> Result<()> {
        let mut info = SessionEndInfo::new();
        info.set_status(match status {
            SessionStatus::Success => Status::STATUS_SUCCESS,
            SessionStatus::Failure => Status::STATUS_FAILURE,
            SessionStatus::Running => Status::STATUS_RUNNING,
            SessionStatus::Unknown => Status::STATUS_UNKNOWN,
        });
        info.set_end_time_secs(now_secs());
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        data.set_session_end_info(info);
        self.hparams_value("_hparams_/session_end_info", data)
    }

    fn hparams_value(&mut self, tag: &str, data: HParamsPluginData) -> Result<()> {
        let content = data.write_to_bytes().map_err(|e| Error::Run {
            path: self.path.clone(),
            message: format!("encoding hparams: {e}"),
        })?;
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_FLOAT);
        let mut shape = TensorShapeProto::new();
        let mut dim = TensorShapeProto_Dim::new();
        dim.set_size(0);
        shape.set_dim(RepeatedField::from_vec(vec![dim]));
        tensor.set_tensor_shape(shape);
        self.write_summary(0, plugin_value(tag, "hparams", content, tensor))
    }
}

fn to_value(v: &HValue) -> Value {
    let mut out = Value::new();
    match v {
        HValue::Num(x) => out.set_number_value(*x),
        HValue::Str(s) => out.set_string_value(s.clone()),
        HValue::Bool(b) => out.set_bool_value(*b),
    }
    out
}

fn plugin_value(tag: &str, plugin: &str, content: Vec<u8>, tensor: TensorProto) -> Summary {
    let mut pd = SummaryMetadata_PluginData::new();
    pd.set_plugin_name(plugin.into());
    pd.set_content(content);
    let mut meta = SummaryMetadata::new();
    meta.set_plugin_data(pd);
    let mut value = tensorboard_proto::summary::Summary_Value::new();
    value.set_tag(tag.into());
    value.set_metadata(meta);
    value.set_tensor(tensor);
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    summary
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Best effort: a writer dropped on an error path still leaves what it buffered on disk.
        let _ = self.records.flush();
    }
}

/// Scalar series of a run directory as TensorBoard would show them: every event file in `dir`
/// read in name order, with a `SessionLog START` at step N dropping earlier points at steps ≥ N.
/// A record cut off at the end of a file (a writer killed mid-write) is ignored, as TensorBoard
/// does.
pub fn read_scalars(dir: &Path) -> Result<std::collections::BTreeMap<String, Vec<(u64, f64)>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    let mut series: std::collections::BTreeMap<String, Vec<(u64, f64)>> = Default::default();
    for file in files {
        let bytes = std::fs::read(&file).at(&file)?;
        for record in records(&bytes) {
            let Ok(ev) = Event::parse_from_bytes(record) else {
                continue;
            };
            let step = ev.get_step().max(0) as u64;
            if ev.has_session_log()
                && ev.get_session_log().get_status() == SessionLog_SessionStatus::START
            {
                for points in series.values_mut() {
                    points.retain(|(s, _)| *s < step);
                }
            }
            if ev.has_summary() {
                for v in ev.get_summary().get_value() {
                    if v.has_simple_value() {
                        series
                            .entry(v.get_tag().to_string())
                            .or_default()
                            .push((step, v.get_simple_value() as f64));
                    }
                }
            }
        }
    }
    Ok(series)
}

/// The payloads of the complete, CRC-valid TFRecords in `bytes`.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    use tensorboard_rs::masked_crc32c::masked_crc32c;
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 12) {
        let len_bytes: [u8; 8] = header[..8].try_into().unwrap_or_default();
        let len = u64::from_le_bytes(len_bytes);
        let len_crc = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if masked_crc32c(&len_bytes) != len_crc {
            break;
        }
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
        else {
            break;
        };
        let (Some(data), Some(crc)) = (bytes.get(at + 12..end), bytes.get(end..end + 4)) else {
            break;
        };
        if masked_crc32c(data) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            break;
        }
        out.push(data);
        at = end + 4;
    }
    out
}
