//! `baton deploy-check`'s report, as a person and as CI read it, over runs that v2 would break:
//! one past the point where v2 adds a step, one of a function v2 removed, one on the old
//! branch of a patch (compatible). The binary's exit codes are tested in tests/cli.rs.

use std::sync::Arc;
use std::time::Duration;

use baton::Registry;
use baton::engine::run_id_for;
use baton::store::memory::MemoryStore;
use baton_cli::deploy_check::{report_json, summary};
use baton_testkit::upgrade::{
    self, ARTICLE, ARTICLE_EVENT, Article, Bodies, LEGACY, LEGACY_EVENT, Stack,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_each_run_that_would_break_where_and_why() {
    let bodies = Bodies::default();
    let v1 = || {
        Registry::new()
            .register(upgrade::article(Article::V1, &bodies))
            .unwrap()
            .register(upgrade::legacy(&bodies))
            .unwrap()
    };
    let mut stack = Stack::new(Arc::new(MemoryStore::new()));
    let engine = stack.engine(v1(), Duration::ZERO);
    let past = run_id_for(
        &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
        ARTICLE,
    );
    let engine = stack.deploy(v1(), Duration::from_secs(7200)).await;
    let before = run_id_for(
        &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
        ARTICLE,
    );
    let legacy = run_id_for(&stack.send(&engine, LEGACY_EVENT, json!({})).await, LEGACY);

    let v2 = |version| {
        Registry::new()
            .register(upgrade::article(version, &bodies))
            .unwrap()
    };
    let breaking = stack
        .engine(v2(Article::V2Breaking), Duration::from_secs(7200))
        .deploy_check()
        .await
        .unwrap();
    let text = summary(&breaking, "SQLite .baton/baton.db", 1, 0.01);
    println!("{text}");
    assert!(text.contains("3 unfinished runs"), "{text}");
    assert!(text.contains("compatible        1"), "{text}");
    assert!(text.contains("would fail        1"), "{text}");
    assert!(text.contains("function removed  1"), "{text}");
    assert!(
        text.contains(&format!(
            "{past} article at step publish (order): NonDeterministic:"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("  {legacy} legacy")), "{text}");
    assert!(
        !text.contains(&before),
        "a compatible run is not listed: {text}"
    );
    assert!(text.contains("FAIL:"), "{text}");
    let json = report_json(&breaking);
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
    assert_eq!(json["ok"], false);
    assert_eq!(
        (
            json["checked"].clone(),
            json["would_fail"].clone(),
            json["function_removed"].clone()
        ),
        (json!(3), json!(1), json!(1))
    );
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{json}");
    let failing = runs.iter().find(|r| r["run_id"] == past.as_str()).unwrap();
    assert_eq!(failing["verdict"], "would_fail");
    assert_eq!(failing["step_id"], "publish");
    assert_eq!(failing["reason"], "order");
    assert_eq!(failing["error"]["name"], "NonDeterministic");
    let removed = runs
        .iter()
        .find(|r| r["run_id"] == legacy.as_str())
        .unwrap();
    assert_eq!(removed["verdict"], "function_removed");

    // The patched v2 (and the legacy function kept): all compatible, the old branch reported.
    let patched = stack
        .engine(
            v2(Article::V2Patched)
                .register(upgrade::legacy(&bodies))
                .unwrap(),
            Duration::from_secs(7200),
        )
        .deploy_check()
        .await
        .unwrap();
    let text = summary(&patched, "SQLite .baton/baton.db", 2, 0.01);
    println!("{text}");
    assert!(text.contains("OK: every unfinished run replays"), "{text}");
    assert!(text.contains("article @review: 1 run\n"), "{text}");
    assert_eq!(
        report_json(&patched)["old_branches"],
        json!({"article @review": 1})
    );
}
