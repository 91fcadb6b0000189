//! What `baton dev` does for this app before it serves ([`baton_cli::App::dev`]): unless an
//! outside service's URL is configured (`BATON_{SERVICE}_URL`), it starts the fakes of all of
//! them on 127.0.0.1 ([`app::FAKES_PORT`], or any free port when that one is taken) and
//! runs the functions against them, with the fake clip service's signed webhook calling back
//! the dev server, so every example works on a fresh clone.

use baton_cli::{DevContext, DevSetup};
use serde_json::json;

use app::fakes::{Fakes, WebhookTarget};
use app::services::Services;

/// The clip webhook secret used with the fake clip service when
/// `BATON_WEBHOOK_SECRET_CLIPS` is not set.
pub const DEV_CLIPS_SECRET: &str = "dev-clips-secret";

/// `baton dev`'s hook.
pub async fn start(cx: DevContext) -> anyhow::Result<DevSetup> {
    let example = json!({"order_id": "o-1", "items": ["book"], "flaky_payment": true});
    if Services::configured_in_env() {
        return Ok(DevSetup::new(app::registry())
            .note("Outside services: from BATON_<SERVICE>_URL")
            .example_event(app::examples::order::EVENT, example));
    }
    let fakes = match Fakes::start_on(app::FAKES_PORT).await {
        Ok(fakes) => fakes,
        Err(_) => Fakes::start().await?,
    };
    // The fake clip service calls back this server, signed with the source's secret.
    let secret = std::env::var("BATON_WEBHOOK_SECRET_CLIPS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEV_CLIPS_SECRET.to_owned());
    fakes.set_clip_webhook(WebhookTarget {
        baton_url: cx.url,
        secret: secret.clone(),
    });
    Ok(
        DevSetup::new(app::registry_with(Services::at(&fakes.base_url)))
            .webhook_secret("clips", &secret)
            .note(format!(
                "Outside services: fakes at {} (set BATON_<SERVICE>_URL to use real ones)",
                fakes.base_url
            ))
            .example_event(app::examples::order::EVENT, example)
            .keep(fakes),
    )
}
