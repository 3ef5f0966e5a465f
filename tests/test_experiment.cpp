// Experiments end to end on a small synthetic problem: config errors, train + eval + export +
// eval of the export, resume exactness, sweeps, init_from, and a NaN loss that stops cleanly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "engine/io/safetensors.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/checkpoint.h"
#include "engine/train/data_sets.h"
#include "engine/train/trainer.h"
#include "kernels/device.h"
#include "models/model.h"
#include "tests/experiment_test_util.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;
using ttq::testing::TempDir;
using ttq::testing::checkpoint_bytes;
using ttq::testing::quiet;
using ttq::testing::overwriting;
using ttq::testing::two_stage_config;
using ttq::testing::idx_images;
using ttq::testing::idx_labels;
using ttq::testing::write_bytes;
namespace fs = std::filesystem;

TEST(ExperimentConfigTest, ErrorsNameTheJsonPath) {
  TempDir d;
  json j = two_stage_config(d.path());
  auto err = [](json c) { return error_of([&] { parse_experiment(c); }); };
  json typo = j;
  typo["stages"][1]["quantisation"] = typo["stages"][1]["quantization"];
  typo["stages"][1].erase("quantization");
  EXPECT_NE(err(typo).find("unknown key 'stages.1.quantisation' (did you mean 'stages.1.quantization'?)"), std::string::npos)
      << err(typo);
  json wrong_type = j;
  wrong_type["stages"][0]["epochs"] = "two";
  EXPECT_NE(err(wrong_type).find("'stages.0.epochs' must be an integer"), std::string::npos) << err(wrong_type);
  json too_big = j;
  too_big["stages"][0]["epochs"] = 4294967297LL;  // would wrap to 1 in an int
  EXPECT_NE(err(too_big).find("'stages.0.epochs' is 4294967297, out of range"), std::string::npos) << err(too_big);
  json bad_value = j;
  bad_value["stages"][0]["batch_size"] = 1;
  EXPECT_NE(err(bad_value).find("'stages.0.batch_size' must be >= 2"), std::string::npos) << err(bad_value);
  json bad_data = j;
  bad_data["data"]["dataset"] = "cifar_10";
  EXPECT_NE(err(bad_data).find("did you mean 'cifar10'"), std::string::npos) << err(bad_data);
  json bad_opt = j;
  bad_opt["stages"][0]["optimizer"]["type"] = "adamw";
  EXPECT_NE(err(bad_opt).find("'stages.0.optimizer.type'"), std::string::npos) << err(bad_opt);
  // A stage's name is the name of its checkpoint file.
  for (const std::string& bad : {std::string(""), std::string(".."), std::string("a/b"), std::string("x\0y", 3)}) {
    json named = j;
    named["stages"][0]["name"] = bad;
    EXPECT_NE(err(named).find("'stages.0.name'"), std::string::npos) << err(named);
    EXPECT_NE(err(named).find("cannot name a file"), std::string::npos) << err(named);
  }
  json last = j;
  last["stages"][1]["name"] = "last";
  EXPECT_NE(err(last).find("'stages.1.name' cannot be 'last'"), std::string::npos) << err(last);
  json twice = j;
  twice["stages"][1]["name"] = "fp";
  EXPECT_NE(err(twice).find("'stages.1.name' 'fp' is also the name of stage 0"), std::string::npos) << err(twice);
  // A checkpoint's stored configuration that no longer reads names who read it and the file.
  json stored = j;
  stored["stages"][0]["epochs"] = 0;
  const std::string old = error_of([&] { parse_stored_experiment(stored, "run/last.safetensors", "eval"); });
  EXPECT_NE(old.find("eval: the configuration stored in 'run/last.safetensors' no longer reads: config: "
                     "'stages.0.epochs' must be >= 1"),
            std::string::npos)
      << old;
  json no_stages = j;
  no_stages.erase("stages");
  EXPECT_NE(err(no_stages).find("'stages' must be a non-empty list"), std::string::npos);
  EXPECT_NE(error_of([] { read_json_file("/nonexistent/x.json"); }).find("cannot open config '/nonexistent/x.json'"),
            std::string::npos);
  EXPECT_NE(error_of([] { read_json_file("/tmp"); }).find("config '/tmp' is a folder"), std::string::npos);
  // Nested deeper than any config (nlohmann's copies and dumps recurse: the stack would overflow).
  TempDir deep_dir;
  const std::string deep_file = deep_dir.file("deep.json");
  ttq::testing::write_bytes(deep_file, std::string(100000, '[') + std::string(100000, ']'));
  const std::string deep = error_of([&] { read_json_file(deep_file); });
  EXPECT_NE(deep.find("config '" + deep_file + "': JSON nested deeper than 64 levels"), std::string::npos) << deep;
  // Synthetic data sizes that would overflow or exhaust memory.
  json synth = j;
  synth["data"] = {{"dataset", "synthetic"}, {"synthetic", {{"size", 3037000500LL}}}};
  EXPECT_NE(err(synth).find("'data.synthetic': at most"), std::string::npos) << err(synth);
  synth["data"]["synthetic"] = {{"classes", int64_t{1} << 40}};
  EXPECT_NE(err(synth).find("'data.synthetic': at most"), std::string::npos) << err(synth);
}

TEST(ExperimentConfigTest, OverridesAndSweeps) {
  json j = two_stage_config("runs/x");
  j = apply_override(j, "stages.1.quantization.t=0.1");
  j = apply_override(j, "name=renamed");
  EXPECT_DOUBLE_EQ(j["stages"][1]["quantization"]["t"].get<double>(), 0.1);
  EXPECT_EQ(j["name"], "renamed");
  EXPECT_NE(error_of([&] { apply_override(j, "stages.5.epochs=1"); }).find("past the end"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(j, "noequals"); }).find("key.path=value"), std::string::npos);
  const std::string utf8 = error_of([&] { apply_override(j, "name=\xff\xfe"); });
  EXPECT_NE(utf8.find("--set name: the value is not valid UTF-8"), std::string::npos) << utf8;
  const std::string deep = error_of([&] { apply_override(j, "seed=" + std::string(1000, '[')); });
  EXPECT_NE(deep.find("--set seed: JSON nested deeper than 64 levels"), std::string::npos) << deep;
  std::string long_path = "a";
  for (int i = 0; i < 100; ++i) long_path += ".a";
  EXPECT_NE(error_of([&] { apply_override(j, long_path + "=1"); }).find("key path has more than 64 parts"),
            std::string::npos);
  json bad_name = j;
  bad_name["name"] = 5;
  bad_name["sweep"] = {{"seed", {1, 2}}};
  EXPECT_NE(error_of([&] { expand_sweep(bad_name); }).find("config: 'name' must be a string, got 5"), std::string::npos);
  j["sweep"] = {{"stages.1.quantization.t", {0.05, 0.1, 0.2}}, {"seed", {1, 2}}};
  const auto runs = expand_sweep(j);
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_EQ(runs[0].first, "seed=1,t=0.05");
  EXPECT_EQ(runs[5].second["output_dir"], "runs/x/seed=2,t=0.2");
  EXPECT_DOUBLE_EQ(runs[5].second["stages"][1]["quantization"]["t"].get<double>(), 0.2);
  EXPECT_FALSE(runs[0].second.contains("sweep"));
  // Keys whose last parts agree are named with as many parts as tell them apart.
  j["sweep"] = {{"stages.0.optimizer.lr", {0.1}}, {"stages.1.optimizer.lr", {0.01, 0.02}}, {"seed", {3}}};
  const auto same_last = expand_sweep(j);
  ASSERT_EQ(same_last.size(), 2u);
  EXPECT_EQ(same_last[1].first, "seed=3,0.optimizer.lr=0.1,1.optimizer.lr=0.02");
  EXPECT_DOUBLE_EQ(same_last[1].second["stages"][1]["optimizer"]["lr"].get<double>(), 0.02);
  for (const std::string key : {"", "seed.", ".seed", "stages..0"}) {
    j["sweep"] = {{key, {1, 2}}};
    EXPECT_NE(error_of([&] { expand_sweep(j); }).find("' has an empty part"), std::string::npos) << key;
  }
  // Every run gets a folder of its own.
  j["sweep"] = {{"stages.0.optimizer.lr", {0.05, 0.05}}};
  EXPECT_NE(error_of([&] { expand_sweep(j); }).find("gives two runs the name 'lr=0.05'"), std::string::npos);
  j["sweep"] = {{"description", {"a/b"}}};
  EXPECT_NE(error_of([&] { expand_sweep(j); }).find("the sweep run \"description=a/b\" cannot name a file"),
            std::string::npos) << error_of([&] { expand_sweep(j); });
}

TEST(Experiment, TrainEvalExportEvalExported) {
  TempDir d;
  const ExperimentConfig cfg = parse_experiment(two_stage_config(d.path()));
  const RunSummary s = train_experiment(cfg, quiet());
  ASSERT_EQ(s.stages.size(), 2u);
  EXPECT_LT(s.stages[0].test_top1_error, 0.12);
  EXPECT_LT(s.stages[1].test_top1_error, 0.12);
  EXPECT_GT(s.stages[1].sparsity, 0.0);
  EXPECT_LT(s.deployed_bytes, s.fp32_bytes);
  for (const char* f : {"config.json", "metrics.jsonl", "summary.json", "last.safetensors", "fp.safetensors",
                        "ttq.safetensors"})
    EXPECT_TRUE(fs::exists(d.file(f))) << f;
  // metrics.jsonl: step records every 5 steps and one epoch record per epoch with layer stats.
  std::ifstream in(d.file("metrics.jsonl"));
  int steps = 0, epochs = 0;
  for (std::string line; std::getline(in, line);) {
    json m = json::parse(line);
    if (m["type"] == "step") ++steps;
    if (m["type"] == "epoch") {
      ++epochs;
      EXPECT_TRUE(m.contains("test_top1_error") && m.contains("test_top5_error") && m.contains("train_loss"));
      if (m["stage"] == "ttq") {
        EXPECT_TRUE(m["layers"].contains("conv2"));
      }
    }
  }
  EXPECT_EQ(epochs, 4);
  EXPECT_EQ(steps, 4 * 64 / 5);

  // Eval of the checkpoint, export, eval of the export: identical accuracy and loss.
  const Checkpoint ck = read_checkpoint(d.file("last.safetensors"));
  const ExperimentConfig rcfg = parse_experiment(ck.config);
  DataSets data = load_data_sets(rcfg.data, rcfg.seed);
  Model m1 = build_model(rcfg.model, data.spec, 0);
  load_model(*m1.net, ck);
  const EvalResult e1 = evaluate(*m1.net, data.test, 100, 0);
  EXPECT_DOUBLE_EQ(e1.top1_error, s.stages[1].test_top1_error);
  const ExportReport rep = export_ternary(d.file("model.ttq.safetensors"), *m1.net, ck.config);
  EXPECT_EQ(rep.ternary_layers, 2);
  Model m2 = build_model(rcfg.model, data.spec, 99);
  load_model(*m2.net, read_checkpoint(d.file("model.ttq.safetensors")));
  for (auto* l : quantizable_layers(*m2.net)) EXPECT_FALSE(l->is_ternary());
  const EvalResult e2 = evaluate(*m2.net, data.test, 100, 0);
  EXPECT_EQ(e2.top1_error, e1.top1_error);
  EXPECT_EQ(e2.loss, e1.loss);
  // The exported ternary weights take exactly three values per layer.
  auto* conv2 = dynamic_cast<QuantizableLayer*>(m2.net->find("conv2"));
  std::set<float> values(conv2->weight().value.data<float>(), conv2->weight().value.data<float>() + conv2->weight().value.numel());
  EXPECT_EQ(values.size(), 3u);
  EXPECT_EQ(values.count(0.0f), 1u);

  // A damaged export: codes of another dtype, or an invalid 2-bit code; the error names the file
  // and the tensor.
  const SafeTensorsFile exported = SafeTensorsFile::read(d.file("model.ttq.safetensors"));
  auto rewrite = [&](const std::string& path, const Tensor& codes) {
    SafeTensorsWriter w;
    for (const std::string& name : exported.names())
      w.add(name, name == "conv2.weight_codes" ? codes : exported.tensor(name));
    for (const auto& [k, v] : exported.metadata()) w.add_metadata(k, v);
    w.write(path);
  };
  const Tensor good_codes = exported.tensor("conv2.weight_codes");
  Tensor as_i8 = Tensor::empty(good_codes.shape(), DType::I8);
  std::memcpy(as_i8.raw(), good_codes.raw(), good_codes.nbytes());
  rewrite(d.file("i8.safetensors"), as_i8);
  Tensor invalid = good_codes.clone();
  invalid.data<uint8_t>()[0] = 0xff;  // four codes 0b11
  rewrite(d.file("bad_code.safetensors"), invalid);
  for (const char* f : {"i8.safetensors", "bad_code.safetensors"}) {
    Model m3 = build_model(rcfg.model, data.spec, 99);
    const std::string e = error_of([&] { load_model(*m3.net, read_checkpoint(d.file(f))); });
    const std::string want = d.file(f) + "': 'conv2.weight_codes'";
    EXPECT_NE(e.find(want), std::string::npos) << e;
  }
}

// Per-output-channel scales through a whole experiment: the checkpoint holds one Wp/Wn per
// output channel, resuming needs the same setting, and the export reproduces the model exactly
// with more than three weight values per layer.
TEST(Experiment, PerChannelScalesTrainCheckpointAndExport) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"][1]["quantization"]["per_channel_scales"] = true;
  const RunSummary s = train_experiment(parse_experiment(j), quiet());
  EXPECT_LT(s.stages[1].test_top1_error, 0.12);
  const std::string table = format_summary_table(s);  // the scales shown are means over channels
  EXPECT_NE(table.find("* per-channel scales: the mean over the layer's output channels"), std::string::npos) << table;
  const Checkpoint ck = read_checkpoint(d.file("last.safetensors"));
  ASSERT_TRUE(ck.ternary.contains("conv2"));
  EXPECT_TRUE(ck.ternary["conv2"]["per_channel_scales"].get<bool>());
  const ExperimentConfig rcfg = parse_experiment(ck.config);
  DataSets data = load_data_sets(rcfg.data, rcfg.seed);
  Model m1 = build_model(rcfg.model, data.spec, 0);
  load_model(*m1.net, ck);
  auto* q1 = dynamic_cast<QuantizableLayer*>(m1.net->find("conv2"));
  const int64_t channels = q1->weight().value.shape()[0];
  ASSERT_EQ(ck.file.shape("conv2.wp"), Shape{channels});
  const Tensor wp = q1->wp().value;
  EXPECT_NE(wp.data<float>()[0], wp.data<float>()[1]) << "the channels' scales train apart";
  const EvalResult e1 = evaluate(*m1.net, data.test, 100, 0);
  EXPECT_DOUBLE_EQ(e1.top1_error, s.stages[1].test_top1_error);
  export_ternary(d.file("model.ttq.safetensors"), *m1.net, ck.config);
  Model m2 = build_model(rcfg.model, data.spec, 99);
  load_model(*m2.net, read_checkpoint(d.file("model.ttq.safetensors")));
  const EvalResult e2 = evaluate(*m2.net, data.test, 100, 0);
  EXPECT_EQ(e2.top1_error, e1.top1_error);
  EXPECT_EQ(e2.loss, e1.loss);
  auto* conv2 = dynamic_cast<QuantizableLayer*>(m2.net->find("conv2"));
  const float* w = conv2->weight().value.data<float>();
  EXPECT_GT(std::set<float>(w, w + conv2->weight().value.numel()).size(), 3u);
  // Resuming with one scale per layer is a changed config.
  j["stages"][1]["quantization"]["per_channel_scales"] = false;
  TrainOptions r = quiet();
  r.resume = true;
  const std::string e = error_of([&] { train_experiment(parse_experiment(j), r); });
  EXPECT_NE(e.find("'stages.1.quantization.per_channel_scales'"), std::string::npos) << e;
}

TEST(Experiment, ResumeEndsBitForBitWhereTheUninterruptedRunEnds) {
  TempDir full, cut;
  const RunSummary s =
      ttq::testing::expect_resume_ends_where_the_uninterrupted_run_ends(two_stage_config(""), full.path(), cut.path());
  EXPECT_EQ(s.stages.size(), 2u);
}

TEST(Experiment, ResumeRefusesAChangedConfigOrMissingCheckpoint) {
  TempDir d;
  json j = two_stage_config(d.path());
  TrainOptions r = quiet();
  r.resume = true;
  EXPECT_NE(error_of([&] { train_experiment(parse_experiment(j), r); }).find("no checkpoint"), std::string::npos);
  j["stages"][0]["epochs"] = 1;
  j["stages"].erase(1);
  train_experiment(parse_experiment(j), quiet());
  // What does not change the computation may differ (workers, logging, the transport's timeout).
  json free = j;
  free["data"]["workers"] = 1;
  free["log"]["every_steps"] = 3;
  free["distributed"] = {{"timeout_s", 600.0}};
  free["description"] = "moved";
  EXPECT_EQ(train_experiment(parse_experiment(free), r).stages.size(), 1u);
  j["stages"][0]["optimizer"]["lr"] = 0.1;
  const std::string e = error_of([&] { train_experiment(parse_experiment(j), r); });
  EXPECT_NE(e.find("'stages.0.optimizer.lr' is 0.1, but"), std::string::npos) << e;
  EXPECT_NE(e.find("was trained with 0.05"), std::string::npos) << e;
}

// A checkpoint whose position lies outside the run (damaged metadata) is refused, not indexed.
TEST(Experiment, ResumeRefusesAPositionOutsideTheRun) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"].erase(1);
  j["stages"][0]["epochs"] = 1;
  j["checkpoint"] = {{"every_steps", 7}};
  TrainOptions stop = quiet();
  stop.stop_after_steps = 10;
  train_experiment(parse_experiment(j), stop);
  const Checkpoint ck = read_checkpoint(d.file("last.safetensors"));
  TrainOptions r = quiet();
  r.resume = true;
  for (auto [stage, epoch, batch] : {std::tuple{-1, 0, 7}, {0, 1, 7}, {0, 0, 64}, {2, 0, 0}, {0, -1, 7}}) {
    SCOPED_TRACE(std::to_string(stage) + " " + std::to_string(epoch) + " " + std::to_string(batch));
    TrainingState s = ck.state;
    s.stage = stage;
    s.epoch = epoch;
    s.batch = batch;
    SafeTensorsFile f = SafeTensorsFile::read(d.file("last.safetensors"));
    SafeTensorsWriter w;
    for (const auto& n : f.names()) w.add(n, f.tensor(n));
    for (const auto& [k, v] : f.metadata()) w.add_metadata(k, k == "state" ? s.to_json().dump() : v);
    w.write(d.file("last.safetensors"));
    const std::string e = error_of([&] { train_experiment(parse_experiment(j), r); });
    EXPECT_NE(e.find("the checkpoint is damaged"), std::string::npos) << e;
  }
}

// A checkpoint written before an option existed (its stored configuration lacks the key) still
// resumes when the option keeps its default, and not when the run asks for another value.
TEST(Experiment, ResumeAcceptsACheckpointFromBeforeAnOptionExisted) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["checkpoint"] = {{"every_steps", 70}};
  TrainOptions stop = quiet();
  stop.stop_after_steps = 140;  // in the TTQ stage
  train_experiment(parse_experiment(j), stop);
  SafeTensorsFile f = SafeTensorsFile::read(d.file("last.safetensors"));
  json old = json::parse(f.meta("config"));
  ASSERT_TRUE(old["stages"][1]["quantization"].contains("per_channel_scales"));
  old["stages"][1]["quantization"].erase("per_channel_scales");
  SafeTensorsWriter w;
  for (const auto& n : f.names()) w.add(n, f.tensor(n));
  for (const auto& [k, v] : f.metadata()) w.add_metadata(k, k == "config" ? old.dump() : v);
  w.write(d.file("last.safetensors"));
  TrainOptions r = quiet();
  r.resume = true;
  json other = j;
  other["stages"][1]["quantization"]["per_channel_scales"] = true;
  const std::string e = error_of([&] { train_experiment(parse_experiment(other), r); });
  EXPECT_NE(e.find("'stages.1.quantization.per_channel_scales' is true, but"), std::string::npos) << e;
  EXPECT_NE(e.find("was trained with false"), std::string::npos) << e;
  EXPECT_EQ(train_experiment(parse_experiment(j), r).stages.size(), 2u);
}

// Results bookkeeping across an interruption in a folder that already holds a finished run: the
// stages are those of this run only, each stage's best error is its own, and the summary's best
// is the last stage's.
TEST(Experiment, ResumedRunInAReusedFolderReportsItsOwnStages) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"][0]["epochs"] = 1;
  j["stages"][1]["epochs"] = 1;
  j["checkpoint"] = {{"every_steps", 20}};
  train_experiment(parse_experiment(j), quiet());  // an earlier, finished run in the folder
  TrainOptions stop = overwriting();
  stop.stop_after_steps = 30;
  train_experiment(parse_experiment(j), stop);
  TrainOptions r = quiet();
  r.resume = true;
  const RunSummary s = train_experiment(parse_experiment(j), r);
  ASSERT_EQ(s.stages.size(), 2u);
  EXPECT_EQ(s.stages[0].name, "fp");
  EXPECT_EQ(s.stages[1].name, "ttq");
  const json stages = json::parse(std::ifstream(d.file("stages.json")));
  ASSERT_EQ(stages.size(), 2u);
  // Each stage's best is the best of its own epoch records.
  std::map<std::string, double> best;
  for (const std::string& rec : ttq::testing::metrics_records(d.path())) {
    const json e = json::parse(rec);
    if (e["type"] != "epoch" || !e.contains("test_top1_error")) continue;
    const std::string st = e["stage"];
    best[st] = std::min(best.count(st) ? best[st] : 1.0, e["test_top1_error"].get<double>());
  }
  ASSERT_EQ(best.size(), 2u);
  EXPECT_EQ(s.stages[0].best_test_top1_error, best["fp"]);
  EXPECT_EQ(s.stages[1].best_test_top1_error, best["ttq"]);
  EXPECT_EQ(s.best_test_top1_error, best["ttq"]);
  EXPECT_EQ(stages[1]["best_test_top1_error"].get<double>(), best["ttq"]);
}

// stages.json holds the finished stages' results a resumed run reports: damaged, it is named.
TEST(Experiment, ResumeNamesADamagedStagesFile) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"][0]["epochs"] = 1;
  j["stages"][1]["epochs"] = 1;
  j["checkpoint"] = {{"every_steps", 20}};
  TrainOptions stop = quiet();
  stop.stop_after_steps = 70;  // in the second stage, past the checkpoint at step 60
  train_experiment(parse_experiment(j), stop);
  ttq::testing::write_bytes(d.file("stages.json"), "[{}]");
  TrainOptions r = quiet();
  r.resume = true;
  const std::string e = error_of([&] { train_experiment(parse_experiment(j), r); });
  EXPECT_NE(e.find("--resume: '" + d.file("stages.json") + "' is damaged"), std::string::npos) << e;
}

TEST(Experiment, InitFromAFullPrecisionCheckpoint) {
  TempDir fp, ttq_dir;
  json j = two_stage_config(fp.path());
  j["stages"].erase(1);
  train_experiment(parse_experiment(j), quiet());
  json t = two_stage_config(ttq_dir.path());
  t["stages"].erase(0);
  t["init_from"] = fp.file("fp.safetensors");
  const RunSummary s = train_experiment(parse_experiment(t), quiet());
  EXPECT_LT(s.stages[0].test_top1_error, 0.12);
  t["init_from"] = fp.file("nope.safetensors");
  const std::string missing = error_of([&] { train_experiment(parse_experiment(t), overwriting()); });
  EXPECT_EQ(missing.rfind("init_from: ", 0), 0u) << missing;
  EXPECT_NE(missing.find("nope.safetensors"), std::string::npos) << missing;
  // A checkpoint of another model is refused with the tensor that does not fit, before anything
  // is written to the run folder.
  TempDir fresh;
  t["output_dir"] = fresh.path();
  t["init_from"] = fp.file("fp.safetensors");
  t["model"]["width"] = 4;
  const std::string e = error_of([&] { train_experiment(parse_experiment(t), quiet()); });
  EXPECT_EQ(e.rfind("init_from: ", 0), 0u) << e;
  EXPECT_NE(e.find("different model"), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(fresh.file("config.json")));
  // A relative path is read from the working folder, and the error says so.
  t["init_from"] = "no/such/fp.safetensors";
  const std::string rel = error_of([&] { train_experiment(parse_experiment(t), quiet()); });
  EXPECT_NE(rel.find("a relative init_from is read from the folder ttq runs in"), std::string::npos) << rel;
}

// A checkpoint holds its model's input, so export builds the model without the data set (here a
// Fashion-MNIST folder that does not exist); a checkpoint without it still reads the data set.
TEST(Experiment, ExportNeedsNoDataSet) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["data"] = {{"dataset", "fashion_mnist"}, {"root", d.file("no_data_here")}};
  const ExperimentConfig cfg = parse_experiment(j);
  const InputSpec spec{1, 12, 10, 7};
  TrainingSetInfo info;
  info.input = spec;
  info.norm = Normalization::none(1);
  Model m = build_model(cfg.model, spec, cfg.seed);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  const auto ternary = quantize_model(*m.net, q);
  ASSERT_FALSE(ternary.empty());
  save_checkpoint(d.file("with_input.safetensors"), *m.net, nullptr, TrainingState{}, cfg.resolved, &info);
  save_checkpoint(d.file("without_input.safetensors"), *m.net, nullptr, TrainingState{}, cfg.resolved);
  const Checkpoint ck = read_checkpoint(d.file("with_input.safetensors"));
  ASSERT_TRUE(ck.data.has_value());
  EXPECT_EQ(std::tie(ck.data->input.channels, ck.data->input.height, ck.data->input.width, ck.data->input.classes),
            std::tie(spec.channels, spec.height, spec.width, spec.classes));
  EXPECT_FALSE(read_checkpoint(d.file("without_input.safetensors")).data.has_value());

  const ExportReport r = export_checkpoint(d.file("with_input.safetensors"), d.file("model.ttq.safetensors"));
  EXPECT_EQ(r.ternary_layers, static_cast<int>(ternary.size()));
  EXPECT_EQ(r.tensor_bytes, model_size(*m.net).deployed_bytes);
  EXPECT_GT(r.file_bytes, r.tensor_bytes);
  const Checkpoint exported = read_checkpoint(d.file("model.ttq.safetensors"));
  EXPECT_EQ(exported.format, "ttq-export");
  ASSERT_TRUE(exported.data.has_value());
  EXPECT_EQ(exported.data->input.classes, 7);
  // The exported model computes what the checkpoint's model computes.
  Model back = build_model(cfg.model, spec, cfg.seed + 1);
  load_model(*back.net, exported);
  m.net->eval();
  back.net->eval();
  const Tensor x = ttq::testing::random_tensor({2, 1, 12, 10}, 5);
  EXPECT_TRUE(ttq::testing::all_close(m.net->forward(x), back.net->forward(x), 1e-6, 1e-6));

  const std::string e = error_of([&] { export_checkpoint(d.file("without_input.safetensors"), d.file("b.safetensors")); });
  EXPECT_NE(e.find("config key 'data.root'"), std::string::npos) << e;
  // Never over a training checkpoint, the one exported or another.
  const std::string self = error_of([&] { export_checkpoint(d.file("with_input.safetensors"), d.file("with_input.safetensors")); });
  EXPECT_NE(self.find("is the checkpoint being exported"), std::string::npos) << self;
  const auto kept = checkpoint_bytes(d.file("without_input.safetensors"));
  const std::string other = error_of([&] { export_checkpoint(d.file("with_input.safetensors"), d.file("without_input.safetensors")); });
  EXPECT_NE(other.find("is a training checkpoint"), std::string::npos) << other;
  EXPECT_EQ(checkpoint_bytes(d.file("without_input.safetensors")), kept);
}

// Checkpoints hold what the training set gave (input, normalisation statistics), so the test set
// is evaluated without the training files, with the result the training run reported; for each
// normalisation computed from the training images.
TEST(Experiment, EvaluationNeedsNoTrainingFiles) {
  for (const std::string normalize : {"channel", "pixel_mean"}) {
    SCOPED_TRACE(normalize);
    TempDir data, run;
    write_bytes(data.file("train-images-idx3-ubyte"), idx_images(96, 9, 8));
    write_bytes(data.file("train-labels-idx1-ubyte"), idx_labels(96));
    write_bytes(data.file("t10k-images-idx3-ubyte"), idx_images(40, 9, 8));
    write_bytes(data.file("t10k-labels-idx1-ubyte"), idx_labels(40));
    json j = two_stage_config(run.path());
    j["stages"].erase(1);
    j["stages"][0]["epochs"] = 1;
    j["data"] = {{"dataset", "fashion_mnist"}, {"root", data.path()}, {"normalize", normalize}, {"workers", 1}};
    const ExperimentConfig cfg = parse_experiment(j);
    const RunSummary s = train_experiment(cfg, quiet());
    const Checkpoint ck = read_checkpoint(run.file("last.safetensors"));
    ASSERT_TRUE(ck.data.has_value());
    const DataSets full = load_data_sets(cfg.data, cfg.seed);
    EXPECT_EQ(ck.data->norm.kind, normalize);
    EXPECT_EQ(ck.data->norm.mean, full.info.norm.mean);  // bit for bit through the JSON metadata
    EXPECT_EQ(ck.data->norm.std, full.info.norm.std);
    std::filesystem::remove(data.file("train-images-idx3-ubyte"));
    std::filesystem::remove(data.file("train-labels-idx1-ubyte"));
    const DataSets test = load_test_set(cfg.data, cfg.seed, *ck.data);
    EXPECT_EQ(test.train, nullptr);
    EXPECT_EQ(test.description, "fashion_mnist: 40 test, 1x9x8, 10 classes");
    Model m = build_model(cfg.model, test.spec, cfg.seed);
    load_model(*m.net, ck);
    const EvalResult ev = evaluate(*m.net, test.test, cfg.eval_batch_size, cfg.data.workers);
    EXPECT_EQ(ev.samples, 40);
    EXPECT_EQ(ev.top1_error, s.stages[0].test_top1_error);
    EXPECT_EQ(ev.loss, s.stages[0].test_loss);
    // A test set that does not fit the stored input, or another normalisation, is refused.
    DataConfig other = cfg.data;
    other.normalize = normalize == "channel" ? "pixel_mean" : "channel";
    EXPECT_NE(error_of([&] { load_test_set(other, cfg.seed, *ck.data); }).find("the stored normalisation"),
              std::string::npos);
    write_bytes(data.file("t10k-images-idx3-ubyte"), idx_images(40, 8, 8));
    EXPECT_NE(error_of([&] { load_test_set(cfg.data, cfg.seed, *ck.data); }).find("the model was trained on 1x9x8"),
              std::string::npos);
  }
}

// A data folder that is not there is named with its config key, for each file-based data set.
// Stored training-set information is checked as it is read, naming where it came from.
TEST(Experiment, TrainingSetInfoRoundTripsAndRefusesBadValues) {
  TrainingSetInfo t;
  t.input = {3, 4, 5, 2};
  t.norm.kind = "channel";
  t.norm.mean = {0.1f, 0.2f, 1.0f / 3.0f};
  t.norm.std = {0.25f, 0.5f, 0.7f};
  t.classes = {"cat", "dog"};
  const TrainingSetInfo back = TrainingSetInfo::from_json(json::parse(t.to_json().dump()), "here");
  EXPECT_EQ(back.norm.mean, t.norm.mean);
  EXPECT_EQ(back.norm.std, t.norm.std);
  EXPECT_EQ(back.classes, t.classes);
  EXPECT_EQ(back.input.width, 5);
  auto err = [&](const std::function<void(json&)>& spoil) {
    json j = t.to_json();
    spoil(j);
    return error_of([&] { TrainingSetInfo::from_json(j, "'x.safetensors': metadata 'data'"); });
  };
  EXPECT_NE(err([](json& j) { j["input"]["height"] = 0; }).find("'x.safetensors': metadata 'data': input height 0"),
            std::string::npos);
  EXPECT_NE(err([](json& j) { j["input"].erase("classes"); }).find("'x.safetensors': metadata 'data'"), std::string::npos);
  EXPECT_NE(err([](json& j) { j["normalize"]["kind"] = "zscore"; }).find("unknown normalisation 'zscore'"),
            std::string::npos);
  EXPECT_NE(err([](json& j) { j["classes"] = {"cat"}; }).find("1 class names for 2 classes"), std::string::npos);
  EXPECT_NE(err([](json& j) { j["normalize"]["mean"] = "0.5"; }).find("'x.safetensors': metadata 'data'"),
            std::string::npos);
  EXPECT_NE(err([](json& j) { j["input"]["height"] = 4.5; }).find("input height is not an integer"), std::string::npos);
  EXPECT_NE(err([](json& j) { j["normalize"]["std"][1] = 0.0; }).find("a normalisation std is not positive"),
            std::string::npos);
  EXPECT_NE(err([](json& j) { j["normalize"]["mean"].push_back(0.5); })
                .find("normalisation 'channel' of 3x4x5 inputs needs 3 means and 3 standard deviations, not 4 and 3"),
            std::string::npos);
  EXPECT_NE(err([](json& j) { j["normalize"]["kind"] = "pixel_mean"; }).find("needs 60 means and 0 standard"),
            std::string::npos);
}

TEST(Experiment, AMissingDataRootNamesTheConfigKey) {
  TempDir d;
  for (const std::string ds : {"fashion_mnist", "cifar10", "cifar100"}) {
    DataConfig c;
    c.dataset = ds;
    c.root = d.file("nowhere");
    const std::string e = error_of([&] { load_data_sets(c, 1); });
    EXPECT_NE(e.find("the " + ds + " folder '" + c.root + "' (config key 'data.root') does not exist"), std::string::npos) << e;
  }
}

// A new run does not replace a run in its folder unless told to; --resume or --overwrite.
TEST(Experiment, ANewRunRefusesAFolderHoldingARun) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"].erase(1);
  j["stages"][0]["epochs"] = 1;
  j["data"]["synthetic"]["train"] = 256;
  train_experiment(parse_experiment(j), quiet());
  const auto before = ttq::testing::checkpoint_bytes(d.file("last.safetensors"));
  const std::string e = error_of([&] { train_experiment(parse_experiment(j), quiet()); });
  EXPECT_NE(e.find("already holds a run"), std::string::npos) << e;
  EXPECT_NE(e.find("--resume"), std::string::npos) << e;
  EXPECT_NE(e.find("--overwrite"), std::string::npos) << e;
  EXPECT_EQ(ttq::testing::checkpoint_bytes(d.file("last.safetensors")), before);
  // Starting again removes the earlier run's files (its stage checkpoints by its config, its
  // export), so none passes for the new run's; other files stay.
  export_checkpoint(d.file("last.safetensors"), d.file("model.ttq.safetensors"));
  write_bytes(d.file("notes.txt"), "mine");
  j["seed"] = 4;
  j["stages"][0]["name"] = "fp_again";
  train_experiment(parse_experiment(j), overwriting());
  EXPECT_NE(ttq::testing::checkpoint_bytes(d.file("last.safetensors")), before);
  EXPECT_TRUE(std::filesystem::exists(d.file("fp_again.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(d.file("fp.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(d.file("model.ttq.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(d.file("notes.txt")));
  // A new run starting from the earlier run's checkpoint in the same folder keeps that file.
  j["init_from"] = d.file("fp_again.safetensors");
  j["stages"][0]["name"] = "tuned";
  train_experiment(parse_experiment(j), overwriting());
  EXPECT_TRUE(std::filesystem::exists(d.file("fp_again.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(d.file("tuned.safetensors")));
}

TEST(Experiment, NonFiniteLossStopsWithAnErrorAndKeepsTheCheckpoint) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"][1]["optimizer"]["lr"] = 3e38;  // overflows the weights during the TTQ stage
  const std::string e = error_of([&] { train_experiment(parse_experiment(j), quiet()); });
  EXPECT_NE(e.find("stage 'ttq'"), std::string::npos) << e;
  EXPECT_NE(e.find("not finite"), std::string::npos) << e;
  EXPECT_NE(e.find("(the last checkpoint, " + d.file("last.safetensors") + ", is unchanged)"), std::string::npos) << e;
  const Checkpoint ck = read_checkpoint(d.file("last.safetensors"));
  EXPECT_EQ(ck.state.stage, 1);  // the end of the full-precision stage, intact
  // Diverging before the run's first checkpoint: the error does not point to one.
  TempDir early;
  j["output_dir"] = early.path();
  j["stages"][0]["optimizer"]["lr"] = 3e38;
  const std::string e0 = error_of([&] { train_experiment(parse_experiment(j), quiet()); });
  EXPECT_NE(e0.find("stage 'fp'"), std::string::npos) << e0;
  EXPECT_NE(e0.find("(no checkpoint of this run was written yet)"), std::string::npos) << e0;
  EXPECT_FALSE(std::filesystem::exists(early.file("last.safetensors")));
}

// A model holding a non-finite weight is not written over the last good checkpoint.
TEST(Experiment, ACheckpointOfADivergedModelIsRefusedAndTheOldOneKept) {
  TempDir d;
  Model m = build_model(json{{"name", "small_convnet"}}, InputSpec{1, 8, 8, 4}, 3);
  const std::string path = d.file("last.safetensors");
  save_checkpoint(path, *m.net, nullptr, TrainingState{}, json::object());
  const auto before = ttq::testing::checkpoint_bytes(path);
  auto params = m.net->named_parameters();
  params.back().param->value.data<float>()[0] = std::numeric_limits<float>::infinity();
  const std::string e = error_of([&] { save_checkpoint(path, *m.net, nullptr, TrainingState{}, json::object()); });
  EXPECT_NE(e.find("parameter '" + params.back().name + "' holds inf"), std::string::npos) << e;
  EXPECT_EQ(ttq::testing::checkpoint_bytes(path), before);
}

TEST(Experiment, DeviceSelection) {
  TempDir d;
  json j = two_stage_config(d.path());
  j["stages"].erase(1);
  j["stages"][0]["epochs"] = 1;
  if (cuda_device_count() == 0) {
    j["device"] = "cuda";
    const std::string e = error_of([&] { train_experiment(parse_experiment(j), quiet()); });
    EXPECT_NE(e.find("device 'cuda' requested but there is no usable GPU"), std::string::npos) << e;
  }
  j["device"] = "auto";  // the GPU when there is one, else the CPU
  const RunSummary s = train_experiment(parse_experiment(j), quiet());
  EXPECT_LT(s.stages[0].test_top1_error, 0.2);
  j["device"] = "tpu";
  EXPECT_NE(error_of([&] { parse_experiment(j); }).find("'device' must be cpu, cuda or auto"), std::string::npos);
}
