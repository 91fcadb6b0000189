//! Smoke test of the built Lambda handler binaries: `cargo lambda watch` (the Lambda runtime
//! API emulator; it builds a binary with cargo on its first invocation) runs `lambda-api` (as
//! the `route-events` Lambda) and `lambda-worker` (as `continue-process-order`) against
//! DynamoDB and SQS on moto, and `cargo lambda invoke --data-file` calls them with API Gateway
//! and SQS event JSON as `sam local generate-event` writes it (shared/testkit/fixtures/).
//!
//! Needs `BATON_CARGO_LAMBDA` (the cargo-lambda binary: `scripts/cargo-lambda` installs the
//! pinned one and prints its path) and a moto server (`scripts/moto`; endpoint
//! `BATON_MOTO_ENDPOINT`, default http://127.0.0.1:5005). `scripts/test` sets up both. The
//! table and queues are fresh per run (unique names), so nothing is shared with other tests.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::Credentials;
use baton::Store as _;
use baton::model::{MessageKind, QueueName, RunStatus};
use baton_aws::dynamodb::DynamoStore;
use baton_aws::sqs::{QueueNaming, SqsQueue, decode_message};
use serde_json::{Value, json};

/// moto's default account (its queue URLs are `{endpoint}/{account}/{name}`).
const ACCOUNT: &str = "123456789012";
/// The first invocation of each binary builds it (`cargo build`; a cold target dir takes
/// minutes on 2 cores).
const INVOKE_TIMEOUT: Duration = Duration::from_secs(600);

fn cargo_lambda() -> String {
    match std::env::var("BATON_CARGO_LAMBDA") {
        Ok(path) if !path.trim().is_empty() => path,
        _ => panic!(
            "BATON_CARGO_LAMBDA is not set: run the tests with `scripts/test`, which installs \
             the pinned cargo-lambda (`scripts/cargo-lambda` prints its path) and sets it"
        ),
    }
}

fn endpoint() -> String {
    std::env::var("BATON_MOTO_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:5005".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/shared/testkit/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The store and queue of this run, with the SDK clients on moto (checked: a missing server
/// fails the test, loudly).
struct Aws {
    store: DynamoStore,
    queue: SqsQueue,
    table: String,
    prefix: String,
    url_prefix: String,
}

async fn aws() -> Aws {
    let endpoint = endpoint();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .region("us-east-1")
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let probe = tokio::time::timeout(
        Duration::from_secs(20),
        dynamodb.list_tables().limit(1).send(),
    )
    .await;
    let hint = "Run the tests with `scripts/test`, or start moto with `scripts/moto` \
                (endpoint: BATON_MOTO_ENDPOINT, default http://127.0.0.1:5005).";
    match probe {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "no moto server answers at {endpoint}: {}\n{hint}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        ),
        Err(_) => panic!("the moto server at {endpoint} did not answer within 20 s.\n{hint}"),
    }
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let table = format!("baton-smoke-{unique}");
    let prefix = format!("bl{unique}-");
    let url_prefix = format!("{endpoint}/{ACCOUNT}/");
    let store = DynamoStore::new(dynamodb, table.clone());
    store.create_table().await.expect("create the table");
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&config),
        QueueNaming::new(prefix.clone(), url_prefix.clone()),
    );
    // Every queue of the registry, as template.yaml declares them (a step hosted on Vercel
    // has its queue too, consumed there by its relay).
    let queues: Vec<QueueName> = app::registry().queues();
    queue
        .create_queues(&queues, true)
        .await
        .expect("create the queues");
    Aws {
        store,
        queue,
        table,
        prefix,
        url_prefix,
    }
}

impl Aws {
    /// Receives (and deletes) one message from a queue, long-polling up to 20 s.
    async fn receive_one(&self, q: &QueueName) -> String {
        let url = self.queue.queue_url(q);
        let client = self.queue.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(2)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "ReceiveMessage {url}: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    )
                });
            let messages = out.messages();
            if let Some(m) = messages.first() {
                assert_eq!(messages.len(), 1, "one message on {url}: {messages:?}");
                client
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("DeleteMessage");
                return m.body().expect("a message body").to_owned();
            }
            assert!(Instant::now() < deadline, "no message on {url} within 20 s");
        }
    }
}

/// `cargo lambda watch` in its own process group, killed when dropped, also on a panic: that
/// group, and the group watch starts each handler in (`cargo run --bin {function}`). Its
/// output and the handlers' goes to a log file that is shown when the test fails.
struct Watch {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Watch {
    fn start(aws: &Aws, event_key: &str) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("watch.log");
        let out = File::create(&log).unwrap();
        let port = free_port();
        let mut command = Command::new(cargo_lambda());
        command
            .args(["lambda", "watch", "--ignore-changes", "--invoke-address"])
            .arg("127.0.0.1")
            .arg("--invoke-port")
            .arg(port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            // The functions' configuration, as template.yaml sets it on AWS.
            .env("BATON_TABLE", &aws.table)
            .env("BATON_QUEUE_PREFIX", &aws.prefix)
            .env("BATON_QUEUE_URL_PREFIX", &aws.url_prefix)
            .env("BATON_EVENT_KEY", event_key)
            .env_remove("BATON_SIGNING_KEY")
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("RUST_LOG", "info")
            .env("CARGO_TERM_COLOR", "never")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "{} does not start: {e} (BATON_CARGO_LAMBDA)",
                cargo_lambda()
            )
        });
        let mut watch = Watch {
            child,
            port,
            log,
            dir,
        };
        watch.wait_listening(Duration::from_secs(60));
        watch
    }

    fn wait_listening(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("cargo lambda watch exited ({status}) before listening");
            }
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch did not listen on 127.0.0.1:{} within {within:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `cargo lambda invoke {function} --data-file {payload}`: the handler's response. The
    /// first call of a function builds its binary; a call the emulator could not serve yet is
    /// tried again (the payloads are idempotent: the event has an `id`, and a message handled
    /// twice changes nothing). A build error or a handler process that exits (say, on a
    /// missing setting) fails at once: the emulator itself would leave the call waiting.
    fn invoke(&mut self, function: &str, payload: &Value) -> Value {
        let file = self.dir.path().join(format!("{function}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(payload).unwrap()).unwrap();
        let deadline = Instant::now() + INVOKE_TIMEOUT;
        let mut tries = 0;
        loop {
            tries += 1;
            let from = self.log_len();
            let output = run_until(
                Command::new(cargo_lambda())
                    .args(["lambda", "invoke", function, "--invoke-address"])
                    .arg("127.0.0.1")
                    .arg("--invoke-port")
                    .arg(self.port.to_string())
                    .arg("--data-file")
                    .arg(&file)
                    .args(["--output-format", "json", "--color", "never"]),
                deadline,
                || self.failure_since(from),
            )
            .unwrap_or_else(|e| panic!("invoke {function}: {e}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                return serde_json::from_str(&stdout).unwrap_or_else(|e| {
                    panic!("invoke {function}: the output is not JSON ({e}): {stdout}")
                });
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("cargo lambda watch exited ({status}); invoke {function}: {stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "invoke {function} failed {tries} times within {INVOKE_TIMEOUT:?}; last: \
                 {}\nstdout: {stdout}\nstderr: {stderr}",
                output.status
            );
            eprintln!("invoke {function} (try {tries}) failed, trying again: {stderr}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// What went wrong in the emulator since the log was `from` bytes long: the build failed,
    /// the handler process exited, or watch itself did.
    fn failure_since(&mut self, from: u64) -> Option<String> {
        if let Some(status) = self.child.try_wait().unwrap() {
            return Some(format!("cargo lambda watch exited ({status})"));
        }
        let mut text = String::new();
        let mut f = File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(from)).ok()?;
        f.read_to_string(&mut text).ok()?;
        ["command exited", "error: could not compile"]
            .iter()
            .find_map(|needle| {
                let line = text.lines().find(|l| l.contains(needle))?;
                Some(format!(
                    "the emulator reports {line:?} (the build failed or the handler process \
                     exited; its output is in the watch log below)"
                ))
            })
    }

    fn log_tail(&self) -> String {
        self.log_tail_from(self.log_len().saturating_sub(16 * 1024))
    }

    fn log_tail_from(&self, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Watch's own process group (watch, a cargo build it may be running), then the group
        // it started each handler process in (`cargo run --bin ...`; they would also exit
        // once the runtime API is gone).
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log_tail_from(0);
        for pgid in log.lines().filter_map(|l| {
            let rest = l.split("process group spawned pgid=").nth(1)?;
            rest.split_whitespace().next()?.parse::<u32>().ok()
        }) {
            // Only while its leader is still the `cargo run` watch started (not a reused id).
            let leader = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
            let leader = String::from_utf8_lossy(&leader);
            if leader.contains("cargo") && leader.contains("--bin") {
                kill_group(pgid);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- cargo lambda watch log (tail of {}) ----\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

fn kill_group(pgid: u32) {
    if pgid > 1 {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to its end; kills it at `deadline`, or as soon as `abort` gives a reason.
fn run_until(
    command: &mut Command,
    deadline: Instant,
    mut abort: impl FnMut() -> Option<String>,
) -> Result<Output, String> {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let reason = match abort() {
            Some(reason) => Some(reason),
            None if Instant::now() >= deadline => Some("timed out".to_owned()),
            None => None,
        };
        if let Some(reason) = reason {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reason);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    })
}

/// The API Gateway HTTP API (v2) event of `sam local generate-event`, sent to `POST
/// /e/{key}` with `body` as its JSON body: only the method, path and body change.
fn http_event(key: &str, body: &Value) -> Value {
    let mut event = fixture("apigateway-http-api-proxy.json");
    let path = format!("/e/{key}");
    event["rawPath"] = path.clone().into();
    event["requestContext"]["http"]["method"] = "POST".into();
    event["requestContext"]["http"]["path"] = path.into();
    event["body"] = body.to_string().into();
    event["isBase64Encoded"] = false.into();
    event
}

/// The SQS event of `sam local generate-event`, its one record carrying `body`.
fn sqs_event(body: &str) -> Value {
    let mut event = fixture("sqs-receive-message.json");
    event["Records"][0]["body"] = body.into();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_handler_under_cargo_lambda_starts_and_continues_a_run() {
    let started = Instant::now();
    let aws = aws().await;
    let event_key = format!("smoke-key-{}", ulid::Ulid::new());
    let mut watch = Watch::start(&aws, &event_key);
    eprintln!(
        "cargo lambda watch on 127.0.0.1:{} (log: {})",
        watch.port,
        watch.log.display()
    );

    // POST /e/{key} through API Gateway's event shape into the `lambda-api` binary.
    let order_id = format!("smoke-{}", ulid::Ulid::new());
    let event = json!({
        "name": "demo/order.placed",
        "id": order_id,
        "data": {"order_id": order_id, "items": ["book"]},
    });
    let response = watch.invoke("lambda-api", &http_event(&event_key, &event));
    eprintln!("lambda-api answered after {:?}", started.elapsed());
    assert_eq!(response["statusCode"], 200, "{response:#}");
    let body: Value = serde_json::from_str(response["body"].as_str().expect("a body"))
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {response:#}"));
    assert_eq!(body["status"], 200, "{body}");
    let ids = body["ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 1, "{body}");
    let event_id = ids[0].as_str().unwrap();

    // The run is in DynamoDB and its Start message in the function's continue queue.
    let runs = aws.store.runs_for_event(event_id).await.unwrap();
    assert_eq!(runs.len(), 1, "one run for event {event_id}: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.function_id, "process-order");
    let run = aws
        .store
        .get_run(&run.run_id)
        .await
        .unwrap()
        .expect("the run");
    assert_eq!(run.event.data["order_id"], order_id);
    let continue_q = QueueName::Continue {
        function_id: "process-order".into(),
    };
    let start_body = aws.receive_one(&continue_q).await;
    let start = decode_message(&start_body).unwrap();
    assert_eq!(
        (start.run_id.as_str(), &start.kind),
        (run.run_id.as_str(), &MessageKind::Start)
    );

    // That message, delivered as SQS would, to the `lambda-worker` binary: the run
    // starts and plans its first step, whose message lands in the step's own queue.
    let response = watch.invoke("lambda-worker", &sqs_event(&start_body));
    eprintln!("lambda-worker answered after {:?}", started.elapsed());
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "no failures: {response:#}"
    );
    let journal = aws.store.journal(&run.run_id).await.unwrap();
    let planned: Vec<&str> = journal.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(planned, ["validate"], "{journal:?}");
    let run_now = aws.store.get_run(&run.run_id).await.unwrap().unwrap();
    assert_eq!(run_now.status, RunStatus::Running, "{run_now:?}");
    let step = decode_message(
        &aws.receive_one(&QueueName::Step {
            function_id: "process-order".into(),
            step: "validate".into(),
        })
        .await,
    )
    .unwrap();
    assert_eq!(step.run_id, run.run_id);
    assert!(
        matches!(&step.kind, MessageKind::Step { name, attempt: 1, .. } if name == "validate"),
        "{step:?}"
    );
    eprintln!("smoke test done in {:?}", started.elapsed());
}
