//! Served models against a real server: llama.cpp's OpenAI-compatible server (llama-cpp-python,
//! installed by `scripts/setup-llama-server.sh`) serving the two default GGUFs, started here on
//! 127.0.0.1 at a free port and stopped after. The probe through the server against the same
//! GGUF in process; a transfer run with a served teacher; a server killed mid-generation; servers
//! that fail (an HTTP 500, malformed JSON, no answer) and one without log-probabilities.
use crate::common::{assert_clean_error, gemma3, mores, root, smollm2, stderr, tiny_model};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with llama-cpp-python's server.
fn python() -> PathBuf {
    let p = std::env::var_os("MORES_LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-llama/bin/python"));
    assert!(p.exists(), "{} missing: run scripts/setup-llama-server.sh (scripts/test.sh does)", p.display());
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// llama.cpp's server on 127.0.0.1, stopped when dropped.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    model: PathBuf,
    logits_all: bool,
    log: PathBuf,
}

impl Server {
    pub fn start(model: &Path, logits_all: bool) -> Self {
        let log = std::env::temp_dir().join(format!("mores-llama-server-{}.log", free_port()));
        let mut s = Server { child: None, port: free_port(), model: model.to_path_buf(), logits_all, log };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Start (again) on the same port, and wait until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(python())
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&self.model)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--n_threads", "1", "--n_ctx", "2048"])
            .args(["--logits_all", if self.logits_all { "true" } else { "false" }])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start llama_cpp.server");
        self.child = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v1/models HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("llama_cpp.server did not start: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn samples(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The largest and the mean difference in renormalised option probabilities between two probes
/// of the same prompts, after checking that the prompts are byte-identical; and how many prompts.
fn diffs(a: &Path, b: &Path) -> (f64, f64, usize) {
    let (a, b) = (samples(a), samples(b));
    assert_eq!(a.len(), b.len());
    let (mut worst, mut sum, mut n): (f64, f64, usize) = (0.0, 0.0, 0);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["id"], y["id"]);
        assert_eq!(x["prompt"], y["prompt"], "the scored strings are byte-identical");
        for (p, q) in x["probs"].as_array().unwrap().iter().zip(y["probs"].as_array().unwrap()) {
            let d = (p.as_f64().unwrap() - q.as_f64().unwrap()).abs();
            worst = worst.max(d);
            sum += d;
            n += 1;
        }
    }
    (worst, sum / n as f64, a.len())
}

/// The probe through the server reads the same option probabilities as mores in process on the
/// same GGUF with llama.cpp's numerics (`--weights stored`), on at least 100 prompts of each
/// default model (SmolLM2 through its chat template, Gemma as plain text). They are not equal:
/// llama.cpp quantizes each product's activations to 8 bits where candle's quantized kernels
/// keep them in f32, so probabilities move by up to the tolerance measured here.
fn served_probe_agrees_with_in_process(name: &str, model: PathBuf, (tol_max, tol_mean): (f64, f64)) {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = Server::start(&model, true);
        let common = ["--countries", "USA,NGA,DEU,JPN", "--limit", "13", "--batch", "8"];
        let served = dir.path().join(format!("{name}-served"));
        let local = dir.path().join(format!("{name}-local"));
        let url = server.url();
        let mut a = vec!["probe", "--endpoint", &url, "--tokenizer", s(&model), "--out", s(&served)];
        a.extend(common);
        let o = mores(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut b = vec!["probe", "--model", s(&model), "--weights", "stored", "--out", s(&local)];
        b.extend(common);
        let o = mores(&b);
        assert!(o.status.success(), "{}", stderr(&o));
        let (worst, mean, n) = diffs(&served, &local);
        eprintln!("{name}: {n} prompts, |dp| served vs in process (stored weights): max {worst:.2e}, mean {mean:.2e}");
        assert!(n >= 100, "{name}: {n} prompts");
        assert!(worst <= tol_max && mean <= tol_mean, "{name}: max |dp| {worst}, mean {mean}");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(served.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["model"]["served"]["endpoint"], server.url());
        assert!(m["model"]["served"]["model_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}

#[test]
fn served_probe_agrees_with_in_process_smollm2() {
    served_probe_agrees_with_in_process("smollm2", smollm2(), SMOL_TOL);
}

#[test]
fn served_probe_agrees_with_in_process_gemma3() {
    served_probe_agrees_with_in_process("gemma3", gemma3(), GEMMA_TOL);
}

/// (max, mean) |dp| allowed. Measured on 110 prompts: SmolLM2 max 0.077, mean 0.013; Gemma max
/// 0.084, mean 0.021. llama.cpp's own probabilities for one prompt move by up to about 0.15 with
/// the number of tokens it evaluates in one step (token by token against batched), and its
/// quantized products round the activations otherwise than candle's kernels.
const SMOL_TOL: (f64, f64) = (0.15, 0.03);
const GEMMA_TOL: (f64, f64) = (0.15, 0.03);

/// A transfer recipe on tiny models with the teacher served: paraphrases come from the server.
fn served_teacher_recipe(dir: &Path, endpoint: &str, extra: &str) -> PathBuf {
    let student = tiny_model(&dir.join("student"), "llama", 1);
    let text = format!(
        r#"include = {base:?}
name = "served-teacher"
[student]
path = {student:?}
[lora]
rank = 2
alpha = 4
targets = ["q_proj", "v_proj"]
[train]
epochs = 1
batch = 2
lr = 0.001
max_len = 256
[teacher]
endpoint = {endpoint:?}
tokenizer = {tok:?}
in_flight = 4
timeout_s = 60
retries = 2
[generate]
countries = ["USA", "NGA", "DEU"]
max_questions = 3
paraphrase = true
original = true
[generate.sampling]
max_new_tokens = 24
[transfer]
countries = ["USA", "NGA", "DEU"]
max_heldout_questions = 3
train_questions = 2
teacher_reference = false
min_countries = 3
bootstrap = 200
{extra}
"#,
        base = root().join("recipes/distill/survey-grounded.toml").display().to_string(),
        student = student.display().to_string(),
        tok = smollm2().display().to_string(),
    );
    let p = dir.join("served-teacher.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn served_teacher_runs_a_transfer_end_to_end() {
    let server = Server::start(&smollm2(), true);
    let dir = tempfile::tempdir().unwrap();
    let r = served_teacher_recipe(dir.path(), &server.url(), "");
    let out = dir.path().join("run");
    let o = mores(&["run", s(&r), "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("report.md").exists() && out.join("transfer.json").exists());
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generate/dataset.card.json")).unwrap()).unwrap();
    assert_eq!(card["teacher"]["served"]["endpoint"], server.url());
    assert!(card["kept"].as_u64().unwrap() > 0, "{card}");
}

/// The server killed mid-generation and started again: the rerun completes with the records of
/// an undisturbed run, none twice.
#[test]
fn server_killed_mid_generation_resumes_without_loss_or_duplicates() {
    let mut server = Server::start(&smollm2(), true);
    let dir = tempfile::tempdir().unwrap();
    let r = served_teacher_recipe(dir.path(), &server.url(), "");
    let whole = dir.path().join("whole.jsonl");
    let o = mores(&["generate", "--recipe", s(&r), "--out", s(&whole)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cut = dir.path().join("cut.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mores"))
        .args(["--quiet", "generate", "--recipe", s(&r), "--out", s(&cut)])
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the first records are on disk.
    let t0 = Instant::now();
    while std::fs::read_to_string(&cut).map(|t| t.lines().count()).unwrap_or(0) < 2 && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let lines_at_kill = std::fs::read_to_string(&cut).unwrap().lines().count();
    let whole_lines = std::fs::read_to_string(&whole).unwrap().lines().count();
    if lines_at_kill < whole_lines {
        assert!(!status.success(), "generation went on without its server");
        assert!(err.contains(&server.url()), "the error names the endpoint: {err}");
    }
    server.restart();
    let o = mores(&["generate", "--recipe", s(&r), "--out", s(&cut)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), std::fs::read_to_string(&whole).unwrap());
}

/// A socket that answers every request with `reply` (None: accepts and never answers).
fn fault_server(reply: Option<&'static str>) -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().take(16) {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 65536];
            let _ = c.read(&mut buf);
            match reply {
                Some(r) => {
                    let _ = c.write_all(r.as_bytes());
                }
                None => held.push(c),
            }
        }
    });
    (port, h)
}

#[test]
fn failing_servers_end_in_one_line_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Some("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops"), "HTTP 500"),
        (Some("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"data\": "), "malformed JSON"),
        (None, "no answer"),
    ];
    for (i, (reply, want)) in cases.into_iter().enumerate() {
        let (port, _h) = fault_server(reply);
        let recipe = dir.path().join(format!("r{i}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "include = {:?}\n[model]\nendpoint = \"http://127.0.0.1:{port}/v1\"\ntimeout_s = 2\nretries = 1\n",
                root().join("recipes/probe/wvs.toml").display().to_string()
            ),
        )
        .unwrap();
        let t0 = Instant::now();
        let out = dir.path().join(format!("o{i}"));
        let o = mores(&["probe", "--recipe", s(&recipe), "--countries", "USA", "--limit", "1", "--out", s(&out)]);
        assert_clean_error(&o, &format!("http://127.0.0.1:{port}/v1/models"));
        assert_clean_error(&o, want);
        assert_clean_error(&o, "gave up after 2 tries");
        assert!(t0.elapsed() < Duration::from_secs(30), "{want}: {:?}", t0.elapsed());
    }
}

#[test]
fn server_without_logprobs_is_named() {
    let server = Server::start(&smollm2(), false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = mores(&[
        "probe",
        "--endpoint",
        &server.url(),
        "--tokenizer",
        s(&smollm2()),
        "--countries",
        "USA",
        "--limit",
        "1",
        "--out",
        s(&out),
    ]);
    assert_clean_error(&o, "--logits_all true");
}
