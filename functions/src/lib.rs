//! The app's durable functions: the example workloads `baton dev` serves. The registry built
//! here is the single source of truth for handlers, queues and the generated files
//! ([`generate`]: the handler binaries in `src/bin/` and template.yaml; vercel.json later).
//! [`aws`] holds what each Lambda handler binary runs.

pub mod aws;
pub mod examples;
pub mod generate;

use baton::Registry;
use baton::webhook::WebhookSource;

/// Every function of the app, failure handlers included, and the outside services that call
/// back.
pub fn registry() -> Registry {
    Registry::new()
        .register(examples::order::function())
        .and_then(|r| r.register(examples::order::daily_report()))
        .expect("the example functions are valid")
        // The clip service's task callbacks (`clips/task.updated`), signed over
        // `{timestamp}.{body}`; secret in BATON_WEBHOOK_SECRET_CLIPS.
        .register_webhook(
            WebhookSource::new("clips", "task.updated")
                .signature_header("x-clips-signature")
                .timestamp_header("x-clips-timestamp")
                .id_header("x-clips-delivery"),
        )
        .expect("the webhook sources are valid")
}
