//! The template under the real SAM CLI: the artifacts `sam build` made (.aws-sam/build, arm64
//! as deployed, run under qemu), invoked in the Lambda emulator's containers, against DynamoDB
//! and SQS on a moto server listening on the docker bridge's own address.
//!
//! - every handler kind answers `sam local invoke` with an event from `sam local generate-event`;
//! - the API contract (tests/support/contract.rs, which the dev server passes too) holds under
//!   `sam local start-api`;
//! - whole runs, driven by a loop that plays Lambda's SQS event source mappings: it receives
//!   from the moto queues, builds the SQS event, invokes the queue's function with
//!   `sam local invoke`, deletes what the handler did not report failed and leaves the
//!   failures for redelivery. Message delays are moto's (`DelaySeconds`). The two steps of
//!   `process-order` hosted on Vercel go through their relay Lambdas to the Vercel step
//!   endpoint, served by this process on the bridge address.
//!
//! Set up by scripts/test: scripts/sam-local (Docker, qemu, the stand-in base image), moto on
//! the bridge (`BATON_SAM_MOTO_ENDPOINT`), `scripts/sam build`. `BATON_SAM_LOCAL=0` skips
//! these tests (and scripts/test skips the set-up); without either, they fail with a hint.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsMessage;
use baton::model::{Message, MessageKind, QueueName, RunStatus, RunSummary, StepStatus};
use baton::queue::{Envelope, Queue as _};
use baton::{EngineConfig, Store as _};
use baton_testkit::moto::{Deployment, EVENT_KEY, REGION, SIGNING_KEY};
use baton_testkit::sqs_trigger::SqsTrigger;
use serde_json::{Value, json};

#[path = "support/contract.rs"]
mod contract;

const RELAY_SECRET: &str = "sam-local-relay-secret-0123456789-abcdef";
const WEBHOOK_SECRET: &str = "sam-local-webhook-secret-0123";

/// One SAM test at a time: each starts many containers on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The moto endpoint the containers reach, or `None` when the SAM tests are switched off.
fn moto_endpoint() -> Option<String> {
    if std::env::var("BATON_SAM_LOCAL").is_ok_and(|v| v == "0") {
        eprintln!("BATON_SAM_LOCAL=0: SAM local tests skipped");
        return None;
    }
    let endpoint = std::env::var("BATON_SAM_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "BATON_SAM_MOTO_ENDPOINT is not set: run the tests with scripts/test (it sets up \
             Docker, moto on the bridge and `sam build`), or set BATON_SAM_LOCAL=0 to skip them"
        )
    });
    assert!(
        root().join(".aws-sam/build/template.yaml").exists(),
        "no .aws-sam/build: run `scripts/sam build --beta-features` first (scripts/test does)"
    );
    Some(endpoint.trim_end_matches('/').to_owned())
}

/// The host part of an `http://host:port` endpoint: the bridge address.
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.trim_start_matches("http://");
    rest.split(':').next().unwrap()
}

fn sam() -> Command {
    let mut command = Command::new(root().join("scripts/sam"));
    command
        .current_dir(root())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_REGION", REGION)
        .env_remove("AWS_PROFILE");
    command
}

/// `sam local generate-event SERVICE EVENT [ARGS]` (each asked once per test binary).
fn generate_event(args: &[&str]) -> Value {
    static CACHE: Mutex<Vec<(String, Value)>> = Mutex::new(Vec::new());
    let key = args.join(" ");
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, event)) = cache.iter().find(|(k, _)| *k == key) {
        return event.clone();
    }
    let out = sam()
        .args(["local", "generate-event"])
        .args(args)
        .output()
        .expect("scripts/sam runs");
    assert!(
        out.status.success(),
        "generate-event {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event: Value = serde_json::from_slice(&out.stdout).expect("generate-event prints JSON");
    cache.push((key, event.clone()));
    event
}

/// One stack under test: a fresh table and queues on moto, and what `sam local` needs to
/// point the containers at them.
struct Stack {
    deployment: Deployment,
    endpoint: String,
    dir: tempfile::TempDir,
    env_file: PathBuf,
    /// The Vercel step endpoint's address (bridge:port), for the relays.
    vercel: Option<String>,
}

impl Stack {
    async fn start(endpoint: &str) -> Stack {
        let deployment =
            Deployment::start_at(endpoint, app::registry(), EngineConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("env.json");
        let stack = Stack {
            deployment,
            endpoint: endpoint.to_owned(),
            dir,
            env_file,
            vercel: None,
        };
        stack.write_env();
        stack
    }

    /// Serves the Vercel step endpoint of every relayed step on the bridge address: the code
    /// the Vercel functions run (`vercel::step_router`), over this stack's engine.
    async fn serve_vercel_steps(&mut self) {
        let listener = tokio::net::TcpListener::bind((host_of(&self.endpoint), 0))
            .await
            .expect("bind the bridge address");
        let addr = listener.local_addr().unwrap();
        let router = baton_aws::vercel::step_router(
            self.deployment.engine.clone(),
            RELAY_SECRET.to_owned(),
            Duration::from_secs(30),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        self.vercel = Some(addr.to_string());
        self.write_env();
    }

    /// The env-vars file: what the template cannot know (the table's name; each relay's
    /// Vercel URL). The endpoint and queue prefix go in as template parameters.
    fn write_env(&self) {
        let mut env = json!({"Parameters": {"BATON_TABLE": self.deployment.store.table()}});
        let registry = app::registry();
        for (function, step, _) in baton_deploy::vercel_steps(&registry) {
            let queue = QueueName::Step {
                function_id: function.id.clone(),
                step: step.to_owned(),
            };
            if let Some(vercel) = &self.vercel {
                env[baton_deploy::consumer_of(&registry, &queue)] = json!({
                    "BATON_RELAY_URL": format!(
                        "http://{vercel}/api/{}",
                        baton_aws::vercel::step_function_name(&function.id, step)
                    )
                });
            }
        }
        std::fs::write(&self.env_file, env.to_string()).unwrap();
    }

    fn parameters(&self) -> Vec<String> {
        [
            (
                "QueuePrefix",
                self.deployment.queue.naming().prefix.as_str(),
            ),
            ("EventKey", EVENT_KEY),
            ("SigningKey", SIGNING_KEY),
            ("WebhookClipsSecret", WEBHOOK_SECRET),
            ("VercelUrl", "https://vercel.invalid"),
            ("RelaySecret", RELAY_SECRET),
            ("EndpointUrl", self.endpoint.as_str()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    }

    fn local_args(&self, command: &mut Command) {
        command
            .args(["--skip-pull-image", "--template"])
            .arg(root().join(".aws-sam/build/template.yaml"))
            .arg("--env-vars")
            .arg(&self.env_file)
            .arg("--parameter-overrides")
            .args(self.parameters());
    }

    /// `sam local invoke FUNCTION -e EVENT`: what the handler answered.
    fn invoke(&self, function: &str, event: &Value) -> Value {
        let file = self
            .dir
            .path()
            .join(format!("event-{}.json", ulid::Ulid::new()));
        std::fs::write(&file, event.to_string()).unwrap();
        let mut command = sam();
        command
            .args(["local", "invoke", function, "--event"])
            .arg(&file);
        self.local_args(&mut command);
        let out = command.output().expect("scripts/sam runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "sam local invoke {function}: {stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{function} panicked:\n{stderr}"
        );
        assert!(
            !stderr.contains("No response from invoke container"),
            "sam local invoke {function}: the emulator did not answer. With a Docker engine of \
             your own, run dockerd with --userland-proxy=false (as scripts/sam-local does): \
             through docker-proxy SAM's wait for the emulator passes before the emulator, slow \
             to start under qemu, listens.\n{stderr}"
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{function} answered no JSON ({e}): {stdout:?}\n{stderr}"))
    }

    async fn runs_of(&self, event_id: &str) -> Vec<RunSummary> {
        self.deployment
            .observer
            .runs_for_event(event_id)
            .await
            .expect("runs_for_event")
    }
}

/// An SQS event as Lambda builds it: the generated event's record shape, with the real
/// messages' fields.
fn sqs_event(template: &Value, records: &[SqsMessage]) -> Value {
    let base = &template["Records"][0];
    let records: Vec<Value> = records
        .iter()
        .map(|m| {
            let mut record = base.clone();
            let real = serde_json::to_value(m).unwrap();
            for (k, v) in real.as_object().unwrap() {
                if !v.is_null() {
                    record[k] = v.clone();
                }
            }
            record
        })
        .collect();
    json!({ "Records": records })
}

/// What a queue handler reported failed.
fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch response: {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// Lambda's event source mappings, one `sam local invoke` per batch.
struct Driver<'a> {
    stack: &'a Stack,
    sqs_template: Value,
    triggers: Vec<(SqsTrigger, String)>,
    invocations: usize,
}

impl<'a> Driver<'a> {
    async fn new(stack: &'a Stack) -> Driver<'a> {
        let registry = app::registry();
        let client = stack.deployment.queue.client().clone();
        let mut triggers = Vec::new();
        let queues = stack.deployment.queues.iter().map(|queue| {
            let function = baton_deploy::consumer_of(&registry, queue);
            (stack.deployment.queue.queue_url(queue), function)
        });
        let dead_letters = (
            stack.deployment.queue.dlq_url(),
            "DeadLettersFunction".to_owned(),
        );
        for (url, function) in queues.chain([dead_letters]) {
            let mut trigger = SqsTrigger::new(client.clone(), url, REGION)
                .await
                .expect("queue attributes");
            // Longer than an invoke under emulation takes.
            trigger.visibility_timeout = 60;
            triggers.push((trigger, function));
        }
        Driver {
            stack,
            sqs_template: generate_event(&["sqs", "receive-message"]),
            triggers,
            invocations: 0,
        }
    }

    /// Delivers what every queue holds, once; returns the batches delivered.
    async fn deliver_once(&mut self) -> usize {
        let mut batches = 0;
        for (trigger, function) in &self.triggers {
            let records = trigger.receive(Duration::ZERO).await.expect("receive");
            if records.is_empty() {
                continue;
            }
            let response = self
                .stack
                .invoke(function, &sqs_event(&self.sqs_template, &records));
            self.invocations += 1;
            batches += 1;
            let failed = failures(&response);
            let done: Vec<SqsMessage> = records
                .into_iter()
                .filter(|r| !failed.contains(r.message_id.as_ref().unwrap()))
                .collect();
            trigger.delete(&done).await.expect("delete");
        }
        batches
    }

    /// Delivers until every run of these events has ended.
    async fn until_ended(&mut self, events: &[String], timeout: Duration) -> Vec<RunSummary> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut runs = Vec::new();
            for id in events {
                runs.extend(self.stack.runs_of(id).await);
            }
            if !runs.is_empty() && runs.iter().all(|r| r.status.is_terminal()) {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "runs not ended after {timeout:?} ({} invocations): {runs:#?}",
                self.invocations
            );
            if self.deliver_once().await == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// An HTTP API (v2) event from `sam local generate-event apigateway http-api-proxy`.
fn http_event(method: &str, path: &str, body: Option<&Value>, bearer: bool) -> Value {
    let mut event = generate_event(&["apigateway", "http-api-proxy"]);
    event["rawPath"] = path.into();
    event["rawQueryString"] = "".into();
    event
        .as_object_mut()
        .unwrap()
        .remove("queryStringParameters");
    event.as_object_mut().unwrap().remove("cookies");
    event["routeKey"] = "$default".into();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    let mut headers = json!({"host": "127.0.0.1", "content-type": "application/json"});
    if bearer {
        headers["authorization"] = format!("Bearer {SIGNING_KEY}").into();
    }
    event["headers"] = headers;
    event["body"] = body.map_or(Value::Null, |b| b.to_string().into());
    event["isBase64Encoded"] = false.into();
    event
}

fn response_body(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_kind_answers_sam_local_invoke() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stack = Stack::start(&endpoint).await;
    let registry = app::registry();

    // route: an event in through POST /e/{key}, its run read back through GET /v1/runs/{id}.
    let order = json!({"name": "demo/order.placed", "data": {"order_id": "kinds", "items": ["a"]}});
    let response = stack.invoke(
        "RouteEventsFunction",
        &http_event("POST", &format!("/e/{EVENT_KEY}"), Some(&order), false),
    );
    assert_eq!(response["statusCode"], 200, "{response}");
    let event_id = response_body(&response)["ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let run_id = stack.runs_of(&event_id).await[0].run_id.clone();
    let response = stack.invoke(
        "RouteRunsGetFunction",
        &http_event("GET", &format!("/v1/runs/{run_id}"), None, true),
    );
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(
        response_body(&response)["data"]["function_id"],
        "process-order"
    );
    // dashboard: the sign-in page.
    let response = stack.invoke(
        "RouteDashboardFunction",
        &http_event("GET", "/login", None, false),
    );
    assert_eq!(response["statusCode"], 200, "{response}");

    // continue, then step: the run's first message, delivered by hand.
    let sqs = generate_event(&["sqs", "receive-message"]);
    let continue_queue = QueueName::Continue {
        function_id: "process-order".into(),
    };
    let client = stack.deployment.queue.client().clone();
    let take = async |queue: &QueueName| {
        let url = stack.deployment.queue.queue_url(queue);
        let trigger = SqsTrigger::new(client.clone(), url, REGION).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let records = trigger.receive(Duration::from_secs(1)).await.unwrap();
            if !records.is_empty() {
                trigger.delete(&records).await.unwrap();
                return records;
            }
            assert!(Instant::now() < deadline, "nothing on {queue:?}");
        }
    };
    let records = take(&continue_queue).await;
    let response = stack.invoke(
        &baton_deploy::consumer_of(&registry, &continue_queue),
        &sqs_event(&sqs, &records),
    );
    assert_eq!(failures(&response), Vec::<String>::new());
    let validate = QueueName::Step {
        function_id: "process-order".into(),
        step: "validate".into(),
    };
    let records = take(&validate).await;
    let response = stack.invoke(
        "StepProcessOrderValidateFunction",
        &sqs_event(&sqs, &records),
    );
    assert_eq!(failures(&response), Vec::<String>::new());
    let steps = stack.deployment.observer.journal(&run_id).await.unwrap();
    let validated = steps.iter().find(|s| s.step_id == "validate").unwrap();
    assert_eq!(validated.status, StepStatus::Completed, "{steps:#?}");
    assert_eq!(validated.output, Some(json!(1)));

    // dead-letters: the run's next message (the validate handler went on and planned
    // reserve-stock), as if it had exhausted its receives, fails the run.
    let reserve = QueueName::Step {
        function_id: "process-order".into(),
        step: "reserve-stock".into(),
    };
    let next = take(&reserve).await;
    let mut dead = sqs_event(&sqs, &next);
    let dlq_arn = baton_aws::sqs::queue_arn(&client, &stack.deployment.queue.dlq_url())
        .await
        .unwrap();
    for record in dead["Records"].as_array_mut().unwrap() {
        record["eventSourceARN"] = dlq_arn.clone().into();
    }
    let response = stack.invoke("DeadLettersFunction", &dead);
    assert_eq!(failures(&response), Vec::<String>::new());
    let run = stack
        .deployment
        .observer
        .get_run(&run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");

    // relay: a batch for a step hosted on Vercel, with no Vercel endpoint configured
    // (VercelUrl is https://vercel.invalid): reported failed, left for redelivery.
    let mut batch = sqs.clone();
    batch["Records"][0]["messageId"] = "relay-no-endpoint".into();
    let response = stack.invoke("RelayProcessOrderChargeCardFunction", &batch);
    assert_eq!(failures(&response), vec!["relay-no-endpoint".to_owned()]);

    // cron: the 06:00 tick starts the daily report.
    let mut tick = generate_event(&["cloudwatch", "scheduled-event"]);
    tick["time"] = "2026-12-01T06:00:00Z".into();
    stack.invoke("CronFunction", &tick);
    let reports = stack
        .deployment
        .observer
        .list_runs(&baton::model::RunQuery::default())
        .await
        .unwrap();
    assert!(
        reports.runs.iter().any(|r| r.function_id == "order-report"),
        "the cron tick started order-report: {reports:#?}"
    );
    // sweeper: nothing is stale in a fresh stack; it answers and changes nothing.
    stack.invoke(
        "SweeperFunction",
        &generate_event(&["cloudwatch", "scheduled-event"]),
    );
    let run = stack
        .deployment
        .observer
        .get_run(&run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_contract_holds_under_sam_local_start_api() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stack = Stack::start(&endpoint).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = sam();
    command
        .args(["local", "start-api", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        // One container per function, kept between requests (the default starts one per
        // request).
        .args(["--warm-containers", "LAZY"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(stack.dir.path().join("start-api.log")).unwrap(),
        ));
    stack.local_args(&mut command);
    let mut child = command.spawn().expect("sam local start-api");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SIGTERM: SAM stops its containers on the way out.
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while reqwest::get(format!("{url}/health")).await.is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sam local start-api exited ({status}): {}",
                std::fs::read_to_string(stack.dir.path().join("start-api.log")).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "start-api did not answer");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _child = Kill(child);
    contract::check(&contract::Target {
        url: &url,
        event_key: EVENT_KEY,
        signing_key: Some(SIGNING_KEY),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_runs_through_the_lambda_emulator() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut stack = Stack::start(&endpoint).await;
    stack.serve_vercel_steps().await;
    let sent = stack
        .deployment
        .send(&json!([
            {"name": "demo/order.placed", "data": {"order_id": "sam-1", "items": ["book", "pen"], "flaky_payment": true}},
            {"name": "demo/order.placed", "data": {"order_id": "sam-2", "items": []}},
        ]))
        .await;
    let mut driver = Driver::new(&stack).await;
    let runs = driver.until_ended(&sent, Duration::from_secs(600)).await;

    let good = stack.runs_of(&sent[0]).await.remove(0);
    let run = stack
        .deployment
        .observer
        .get_run(&good.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed, "{run:#?}");
    let output = run.output.clone().unwrap();
    assert_eq!(
        output["charged_on_attempt"], 3,
        "a retry that succeeds: {output}"
    );
    assert_eq!(output["receipt"], "receipt for sam-1");
    assert_eq!(run.progress.as_ref().map(|p| p.percent), Some(100));
    let steps = stack
        .deployment
        .observer
        .journal(&good.run_id)
        .await
        .unwrap();
    let charge = steps.iter().find(|s| s.step_id == "charge-card").unwrap();
    assert_eq!(charge.attempts, 3, "{steps:#?}");
    assert!(
        steps
            .iter()
            .any(|s| s.step_id == "cool-down" && s.status == StepStatus::Completed),
        "the sleep: {steps:#?}"
    );

    let bad = stack.runs_of(&sent[1]).await.remove(0);
    let run = stack
        .deployment
        .observer
        .get_run(&bad.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert!(run.error.as_ref().unwrap().message.contains("no items"));
    // Its failure handler ran to its end.
    let all = stack
        .deployment
        .observer
        .list_runs(&baton::model::RunQuery::default())
        .await
        .unwrap();
    let handler = all
        .runs
        .iter()
        .find(|r| r.function_id == "process-order-failure")
        .unwrap_or_else(|| panic!("no failure handler run: {all:#?}"));
    let handler_runs = driver
        .until_ended(&[handler.event_id.clone()], Duration::from_secs(300))
        .await;
    assert_eq!(
        handler_runs[0].status,
        RunStatus::Completed,
        "{handler_runs:#?}"
    );

    // A duplicated delivery: the good run's first continue message again changes nothing.
    let before = stack
        .deployment
        .observer
        .journal(&good.run_id)
        .await
        .unwrap();
    let duplicate = Message {
        run_id: good.run_id.clone(),
        function_id: "process-order".into(),
        kind: MessageKind::Start,
        not_before: None,
    };
    stack
        .deployment
        .queue
        .send(vec![Envelope {
            message: duplicate,
            delay: Duration::ZERO,
        }])
        .await
        .unwrap();
    let invocations = driver.invocations;
    while driver.deliver_once().await > 0 {}
    assert!(
        driver.invocations > invocations,
        "the duplicate was delivered"
    );
    let after = stack
        .deployment
        .observer
        .journal(&good.run_id)
        .await
        .unwrap();
    assert_eq!(before, after, "a duplicate delivery changed the journal");
    let run = stack
        .deployment
        .observer
        .get_run(&good.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    eprintln!(
        "sam_local: {} runs ended through {} invocations",
        runs.len(),
        driver.invocations
    );
}
