//! The app: its durable functions (today, Baton's examples), the outside services they call,
//! fakes of those services for development and tests, and the registry that lists them all.
//!
//! Everything deployable is generated from [`registry`] by `baton generate`: the Lambda
//! handler mains in `src/bin/` (each a call into `baton_aws::lambda`), template.yaml, and
//! the Vercel project in `vercel/`. The app's `baton` command line (the workspace's
//! `src/main.rs`) hands the same registry, and its dev hook, to `baton_cli`.
//!
//! - [`examples`]: the functions.
//! - [`services`]: the outside services' clients (reqwest), configured from the environment.
//! - [`fakes`]: local fakes of those services (what `baton dev` and the tests run against).

pub mod examples;
pub mod fakes;
pub mod services;

use std::sync::Arc;

use baton::Registry;
use baton::webhook::WebhookSource;

use services::Services;

/// Where `baton dev` serves the fake outside services, and where the examples look for them
/// when `BATON_{SERVICE}_URL` is not set.
pub const FAKES_PORT: u16 = 8290;

/// Every function of the app, with the outside services from the environment
/// ([`Services::from_env`]; unset ones at the fakes `baton dev` runs on [`FAKES_PORT`]).
pub fn registry() -> Registry {
    registry_with(Services::from_env(&format!(
        "http://127.0.0.1:{FAKES_PORT}"
    )))
}

/// Every function of the app, failure handlers included, and the outside services that call
/// back, with the examples calling `services`.
pub fn registry_with(services: Services) -> Registry {
    let services = Arc::new(services);
    use examples::podcast::Format::{Adventure, Debate, Interview};
    use examples::{clips, podcast, transcription, transcripts};
    Registry::new()
        .register(examples::order::function())
        .and_then(|r| r.register(examples::order::daily_report()))
        .and_then(|r| r.register(clips::function(services.clone())))
        .and_then(|r| r.register(transcription::transcribe_video(services.clone())))
        .and_then(|r| r.register(transcription::generate_embeddings(services.clone())))
        .and_then(|r| r.register(transcription::batch_reprocess()))
        .and_then(|r| r.register(podcast::function(Interview, services.clone())))
        .and_then(|r| r.register(podcast::function(Debate, services.clone())))
        .and_then(|r| r.register(podcast::function(Adventure, services.clone())))
        .and_then(|r| r.register(podcast::on_cancelled(services.clone())))
        .and_then(|r| r.register(transcripts::function(services.clone())))
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
