#include "engine/train/experiment.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/config/parse.h"

namespace ttq {

json read_json_file(const std::string& path) {
  std::error_code ec;
  TTQ_CHECK(!std::filesystem::is_directory(path, ec), "config '" << path << "' is a folder, not a JSON file");
  std::ifstream in(path);
  TTQ_CHECK(in, "cannot open config '" << path << "': " << std::strerror(errno));
  try {
    return json::parse(in, json_depth_limit("config '" + path + "'"));
  } catch (const json::exception& e) {
    TTQ_FAIL("config '" << path << "' is not valid JSON: " << e.what());
  }
}

namespace {

DataConfig parse_data(JsonReader r) {
  DataConfig d;
  d.dataset = r.get<std::string>("dataset", d.dataset);
  const std::vector<std::string> known{"fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic"};
  if (std::find(known.begin(), known.end(), d.dataset) == known.end()) {
    const std::string hint = closest_match(d.dataset, known);
    TTQ_FAIL("config: '" << r.path_of("dataset") << "': unknown data set '" << d.dataset << "'"
                         << (hint.empty() ? " (expected fashion_mnist, mnist, cifar10, cifar100, imagenet or synthetic)"
                                          : " (did you mean '" + hint + "'?)"));
  }
  std::string default_root;
  if (d.dataset == "fashion_mnist") default_root = "/usr/share/datasets/fashion-mnist";
  if (d.dataset == "mnist") default_root = "/usr/share/datasets/mnist";
  if (d.dataset == "cifar10") default_root = "data/cifar-10-batches-bin";
  if (d.dataset == "cifar100") default_root = "data/cifar-100-binary";
  if (d.dataset == "imagenet") default_root = "/data/imagenet";
  d.root = r.get<std::string>("root", default_root);
  d.normalize = r.get<std::string>("normalize", d.normalize);
  TTQ_CHECK(d.normalize == "channel" || d.normalize == "pixel_mean" || d.normalize == "none",
            "config: '" << r.path_of("normalize") << "' must be channel, pixel_mean or none, got '" << d.normalize << "'");
  if (d.dataset == "imagenet") {
    TTQ_CHECK(d.normalize != "pixel_mean", "config: '" << r.path_of("normalize") << "': imagenet takes channel (the "
                                                       "ImageNet statistics) or none, not pixel_mean");
    d.image_size = r.get<int>("image_size", d.image_size);
    d.resize = r.get<int>("resize", d.resize);
    TTQ_CHECK(d.image_size >= 8 && d.image_size <= 4096, "config: '" << r.path_of("image_size") << "' must be in [8, 4096]");
    TTQ_CHECK(d.resize >= d.image_size && d.resize <= 8192,
              "config: '" << r.path_of("resize") << "' must be >= image_size (" << d.image_size << ") and <= 8192");
    d.train_augment = r.get<std::string>("train_augment", d.train_augment);
    TTQ_CHECK(d.train_augment == "random_resized_crop" || d.train_augment == "alexnet",
              "config: '" << r.path_of("train_augment") << "' must be random_resized_crop or alexnet, got '"
                          << d.train_augment << "'");
    d.val_list = r.get<std::string>("val_list", d.val_list);
    d.on_corrupt = r.get<std::string>("on_corrupt", d.on_corrupt);
    TTQ_CHECK(d.on_corrupt == "skip" || d.on_corrupt == "error",
              "config: '" << r.path_of("on_corrupt") << "' must be skip or error, got '" << d.on_corrupt << "'");
    d.scaled_decode = r.get<bool>("scaled_decode", d.scaled_decode);
  } else {
    JsonReader aug = r.child("augment");
    d.augment.pad = aug.get<int64_t>("pad", 0);
    d.augment.hflip = aug.get<bool>("hflip", false);
    TTQ_CHECK(d.augment.pad >= 0 && d.augment.pad <= 64, "config: '" << aug.path_of("pad") << "' must be in [0, 64]");
    aug.finish();
  }
  d.train_subset = r.get<int64_t>("train_subset", 0);
  d.test_subset = r.get<int64_t>("test_subset", 0);
  TTQ_CHECK(d.train_subset >= 0 && d.test_subset >= 0, "config: '" << r.path() << "': subsets must be >= 0");
  d.workers = r.get<int>("workers", d.workers);
  d.prefetch = r.get<int>("prefetch", d.prefetch);
  TTQ_CHECK(d.workers >= 0 && d.workers <= 256, "config: '" << r.path_of("workers") << "' must be in [0, 256]");
  TTQ_CHECK(d.prefetch >= 1, "config: '" << r.path_of("prefetch") << "' must be >= 1");
  if (d.dataset == "synthetic") {
    constexpr int64_t kSyntheticMaxSamples = int64_t{1} << 24;  // an epoch's permutation stays small
    JsonReader s = r.child("synthetic");
    d.synthetic_train = s.get<int64_t>("train", d.synthetic_train);
    d.synthetic_test = s.get<int64_t>("test", d.synthetic_test);
    d.synthetic_size = s.get<int64_t>("size", d.synthetic_size);
    d.synthetic_classes = s.get<int64_t>("classes", d.synthetic_classes);
    d.synthetic_noise = s.get<double>("noise", d.synthetic_noise);
    TTQ_CHECK(d.synthetic_train > 0 && d.synthetic_test > 0 && d.synthetic_size >= 4 && d.synthetic_classes > 1,
              "config: '" << s.path() << "': sizes must be positive (size >= 4, classes >= 2)");
    TTQ_CHECK(d.synthetic_train <= kSyntheticMaxSamples && d.synthetic_test <= kSyntheticMaxSamples &&
                  d.synthetic_size <= 4096 && d.synthetic_classes <= 100000,
              "config: '" << s.path() << "': at most " << kSyntheticMaxSamples
                          << " train and test samples, size 4096 and 100000 classes");
    s.finish();
  }
  r.finish();
  return d;
}

// A name that becomes a file or folder name in the run folder.
void check_file_name(const std::string& name, const std::string& what) {
  TTQ_CHECK(usable_file_name(name),
            what << " " << json_text(name) << " cannot name a file (empty, '.', '..', or holding '/' or NUL)");
}

StageConfig parse_stage(JsonReader r, size_t index) {
  StageConfig s;
  s.name = r.get<std::string>("name", "stage" + std::to_string(index));
  check_file_name(s.name, "config: '" + r.path_of("name") + "'");
  TTQ_CHECK(s.name != "last", "config: '" << r.path_of("name") << "' cannot be 'last' (last.safetensors is the "
                                                                  "run's latest checkpoint)");
  s.epochs = r.get<int>("epochs", s.epochs);
  TTQ_CHECK(s.epochs >= 1, "config: '" << r.path_of("epochs") << "' must be >= 1, got " << s.epochs);
  s.batch_size = r.get<int64_t>("batch_size", s.batch_size);
  TTQ_CHECK(s.batch_size >= 2, "config: '" << r.path_of("batch_size") << "' must be >= 2 (batch norm), got " << s.batch_size);
  JsonReader opt = r.child("optimizer");
  s.optimizer = parse_optimizer(opt);
  JsonReader sched = r.child("schedule");
  s.schedule = parse_schedule(sched);
  s.label_smoothing = r.get<double>("label_smoothing", 0.0);
  TTQ_CHECK(s.label_smoothing >= 0.0 && s.label_smoothing < 1.0, "config: '" << r.path_of("label_smoothing") << "' must be in [0, 1)");
  s.quantize = r.has("quantization");
  if (s.quantize) {
    JsonReader q = r.child("quantization");
    s.fp_layers_from_model = !q.has("full_precision_layers");
    s.quantization = parse_quantize_options(q, {});
  } else {
    r.allow("quantization");
  }
  r.finish();
  return s;
}

}  // namespace

ExperimentConfig parse_experiment(const json& j) {
  ExperimentConfig c;
  JsonReader r(j, "", &c.resolved);
  TTQ_CHECK(!r.has("sweep"), "config: expand the 'sweep' before parsing one experiment");
  c.name = r.get<std::string>("name", c.name);
  c.output_dir = r.get<std::string>("output_dir", "runs/" + c.name);
  const int64_t seed = r.get<int64_t>("seed", 0);
  TTQ_CHECK(seed >= 0, "config: 'seed' must be >= 0, got " << seed);
  c.seed = static_cast<uint64_t>(seed);
  c.device = r.get<std::string>("device", c.device);
  TTQ_CHECK(c.device == "cpu" || c.device == "cuda" || c.device == "auto",
            "config: 'device' must be cpu, cuda or auto, got '" << c.device << "'");
  c.precision = r.get<std::string>("precision", c.precision);
  TTQ_CHECK(c.precision == "fp32" || c.precision == "bf16",
            "config: 'precision' must be fp32 or bf16, got '" << c.precision << "'");
  c.memory_format = r.get<std::string>("memory_format", c.memory_format);
  TTQ_CHECK(c.memory_format == "contiguous" || c.memory_format == "channels_last",
            "config: 'memory_format' must be contiguous or channels_last, got '" << c.memory_format << "'");
  c.data = parse_data(r.child("data"));
  c.model = r.get_raw("model");
  TTQ_CHECK(c.model.is_object() && c.model.contains("name"), "config: 'model' must be an object with a 'name'");
  // The model's own keys are checked when it is built.
  TTQ_CHECK(r.has("stages") && r.raw().at("stages").is_array() && !r.raw().at("stages").empty(),
            "config: 'stages' must be a non-empty list of training stages");
  const json& stages = r.get_raw("stages");
  c.resolved["stages"] = json::array();
  for (size_t i = 0; i < stages.size(); ++i) {
    json& out = c.resolved["stages"].emplace_back(json::object());
    TTQ_CHECK(stages[i].is_object(), "config: 'stages." << i << "' must be an object");
    c.stages.push_back(parse_stage(JsonReader(stages[i], "stages." + std::to_string(i), &out), i));
    for (size_t k = 0; k < i; ++k)
      TTQ_CHECK(c.stages[k].name != c.stages[i].name, "config: 'stages." << i << ".name' '" << c.stages[i].name
                                                                          << "' is also the name of stage " << k
                                                                          << " (each stage writes <name>.safetensors)");
  }
  JsonReader ev = r.child("eval");
  c.eval_every_epochs = ev.get<int>("every_epochs", c.eval_every_epochs);
  c.eval_batch_size = ev.get<int64_t>("batch_size", c.eval_batch_size);
  TTQ_CHECK(c.eval_every_epochs >= 1 && c.eval_batch_size >= 1, "config: 'eval' values must be >= 1");
  ev.finish();
  JsonReader ck = r.child("checkpoint");
  c.checkpoint_every_epochs = ck.get<int>("every_epochs", c.checkpoint_every_epochs);
  c.checkpoint_every_steps = ck.get<int64_t>("every_steps", c.checkpoint_every_steps);
  TTQ_CHECK(c.checkpoint_every_epochs >= 1 && c.checkpoint_every_steps >= 0,
            "config: 'checkpoint.every_epochs' must be >= 1 and 'checkpoint.every_steps' >= 0");
  ck.finish();
  JsonReader lg = r.child("log");
  c.log_every_steps = lg.get<int>("every_steps", c.log_every_steps);
  TTQ_CHECK(c.log_every_steps >= 1, "config: 'log.every_steps' must be >= 1");
  lg.finish();
  c.init_from = r.get<std::string>("init_from", "");
  c.description = r.get<std::string>("description", "");
  JsonReader dr = r.child("distributed");
  c.distributed.backend = dr.get<std::string>("backend", c.distributed.backend);
  const std::vector<std::string> backends{"auto", "mpi", "nccl", "tcp", "none"};
  if (std::find(backends.begin(), backends.end(), c.distributed.backend) == backends.end()) {
    const std::string hint = closest_match(c.distributed.backend, backends);
    TTQ_FAIL("config: '" << dr.path_of("backend") << "' must be auto, mpi, nccl, tcp or none, got '"
                         << c.distributed.backend << "'" << (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
  }
  c.distributed.bucket_mb = dr.get<double>("bucket_mb", c.distributed.bucket_mb);
  c.distributed.first_bucket_mb = dr.get<double>("first_bucket_mb", c.distributed.first_bucket_mb);
  TTQ_CHECK(c.distributed.bucket_mb > 0 && c.distributed.first_bucket_mb > 0,
            "config: 'distributed.bucket_mb' and 'distributed.first_bucket_mb' must be positive");
  c.distributed.timeout_s = dr.get<double>("timeout_s", c.distributed.timeout_s);
  TTQ_CHECK(c.distributed.timeout_s > 0, "config: '" << dr.path_of("timeout_s") << "' must be positive");
  c.distributed.sync_bn = dr.get<bool>("sync_bn", c.distributed.sync_bn);
  dr.finish();
  r.finish();
  return c;
}

json apply_override(json j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  TTQ_CHECK(eq != std::string::npos && eq > 0, "--set expects key.path=value, got '" << assignment << "'");
  const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  TTQ_CHECK(std::count(path.begin(), path.end(), '.') < kJsonMaxDepth,
            "--set: the key path has more than " << kJsonMaxDepth << " parts");
  json value;
  try {
    value = json::parse(text, json_depth_limit("--set " + path));
  } catch (const json::exception&) {
    value = text;  // a bare word is a string
  }
  try {
    (void)value.dump();
  } catch (const json::exception&) {
    TTQ_FAIL("--set " << path << ": the value is not valid UTF-8");
  }
  json* node = &j;
  std::stringstream ss(path);
  std::string part, walked;
  std::vector<std::string> parts;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    walked += (walked.empty() ? "" : ".") + p;
    const bool last = i + 1 == parts.size();
    if (node->is_array()) {
      size_t idx = 0;
      try {
        idx = std::stoul(p);
      } catch (...) {
        TTQ_FAIL("--set " << path << ": '" << walked << "' indexes a list and needs a number");
      }
      TTQ_CHECK(idx < node->size(), "--set " << path << ": '" << walked << "' is past the end of a list of " << node->size());
      node = &(*node)[idx];
    } else {
      TTQ_CHECK(node->is_object() || node->is_null(), "--set " << path << ": '" << walked << "' is inside a non-object value");
      node = &(*node)[p];
    }
    if (last) *node = value;
  }
  return j;
}

ExperimentConfig parse_stored_experiment(const json& j, const std::string& checkpoint_path, const std::string& who) {
  try {
    return parse_experiment(j);
  } catch (const std::exception& e) {
    TTQ_FAIL(who << ": the configuration stored in '" << checkpoint_path << "' no longer reads: " << e.what());
  }
}

namespace {

// "stages.1.optimizer.lr" with parts = 2: "optimizer.lr" (the whole key when it has fewer parts).
std::string last_parts(const std::string& key, int parts) {
  size_t cut = key.size();
  for (int i = 0; i < parts; ++i) {
    if (cut == 0) return key;
    cut = key.find_last_of('.', cut - 1);
    if (cut == std::string::npos) return key;
  }
  return key.substr(cut + 1);
}

std::string value_label(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// What names a swept key's values in the runs' names: its last part ("r"), or as many last parts
// as tell it from the sweep's other keys ("0.optimizer.lr" beside "1.optimizer.lr").
std::string distinct_key_suffix(const json& sweep, const std::string& key) {
  for (int parts = 1;; ++parts) {
    const std::string mine = last_parts(key, parts);
    if (mine == key) return key;
    bool unique = true;
    for (auto other = sweep.begin(); other != sweep.end(); ++other)
      if (other.key() != key && last_parts(other.key(), parts) == mine) unique = false;
    if (unique) return mine;
  }
}

}  // namespace

bool usable_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

std::vector<std::pair<std::string, json>> expand_sweep(const json& j) {
  if (!j.is_object() || !j.contains("sweep")) return {{"", j}};
  const json& sweep = j.at("sweep");
  TTQ_CHECK(sweep.is_object() && !sweep.empty(), "config: 'sweep' must map key paths to lists of values");
  std::vector<std::pair<std::string, json>> runs{{"", j}};
  runs[0].second.erase("sweep");
  for (auto it = sweep.begin(); it != sweep.end(); ++it) {
    TTQ_CHECK(it->is_array() && !it->empty(), "config: 'sweep." << it.key() << "' must be a non-empty list");
    TTQ_CHECK(!it.key().empty() && it.key().front() != '.' && it.key().back() != '.' &&
                  it.key().find("..") == std::string::npos,
              "config: 'sweep' key '" << it.key() << "' has an empty part");
    const std::string short_key = distinct_key_suffix(sweep, it.key());
    std::vector<std::pair<std::string, json>> next;
    for (const auto& [name, cfg] : runs)
      for (const auto& v : *it) {
        json c = apply_override(cfg, it.key() + "=" + v.dump());
        next.emplace_back(name + (name.empty() ? "" : ",") + short_key + "=" + value_label(v), std::move(c));
      }
    runs = std::move(next);
  }
  // Each run gets its own folder.
  for (size_t i = 0; i < runs.size(); ++i) {
    check_file_name(runs[i].first, "config: the sweep run");
    for (size_t k = 0; k < i; ++k)
      TTQ_CHECK(runs[k].first != runs[i].first,
                "config: 'sweep' gives two runs the name '" << runs[i].first << "' (a value repeated?)");
  }
  for (const char* key : {"name", "output_dir"})
    TTQ_CHECK(!j.contains(key) || j.at(key).is_string(),
              "config: '" << key << "' must be a string, got " << json_text(j.at(key)));
  const std::string base_name = j.value("name", std::string("experiment"));
  const std::string base_dir = j.value("output_dir", "runs/" + base_name);
  for (auto& [name, cfg] : runs) {
    cfg["name"] = base_name + "/" + name;
    cfg["output_dir"] = base_dir + "/" + name;
  }
  return runs;
}

}  // namespace ttq
