//! A database written before runs had an `event_name` column opens, and its runs list with
//! their events' names (read once from the event copy, at open).

use baton::Store;
use baton::model::RunQuery;
use baton_sqlite::{Durability, SqliteStore};

#[tokio::test]
async fn runs_of_an_older_database_list_with_their_event_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, function_id TEXT NOT NULL, event_id TEXT NOT NULL,
            status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, output TEXT,
            error TEXT, progress TEXT, replay_of TEXT, event TEXT NOT NULL
         );
         INSERT INTO runs VALUES ('01J00000000000000000000002', 'f', 'e2', 'Completed',
            '2026-01-01T00:00:00.000000000Z', NULL, '1', NULL, NULL, NULL,
            '{\"id\":\"e2\",\"name\":\"shop/order.placed\",\"data\":{},\"ts\":0,\"user\":{}}');
         INSERT INTO runs VALUES ('01J00000000000000000000001', 'f', 'e1', 'Completed',
            '2026-01-01T00:00:00.000000000Z', NULL, '1', NULL, NULL, NULL, '[[[not json');",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let page = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(page.runs.len(), 1);
    assert_eq!(page.runs[0].event_name, "shop/order.placed");
    assert_eq!(
        page.unreadable,
        vec!["01J00000000000000000000001".to_string()]
    );
    // Opening again does not migrate twice.
    drop(store);
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    assert_eq!(
        store
            .list_runs(&RunQuery::default())
            .await
            .unwrap()
            .runs
            .len(),
        1
    );
}
