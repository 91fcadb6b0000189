//! Structured output from the LLM chat API (OpenAI-style chat completions with a JSON
//! schema), shared by the podcast and transcript examples.
//!
//! The service's own errors are already retry-aware ([`crate::services`]). What is left is
//! the model's answer: output that does not parse as the schema is refused non-retriably
//! (`InvalidModelOutput`), so a run fails with what the model said instead of storing garbage
//! or retrying an answer that will not change. (With a sampling model, making it retriable
//! is a choice; the step's `retries` then bounds the tries.)

use baton::StepError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::services::Service;

/// The model asked for (the fake answers any).
pub const MODEL: &str = "gpt-4o-mini";

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// Asks the model for output of schema `name` and parses it as `T`. `user` is the user
/// message's content: a string, or content parts. `idempotency_key`: the step's.
pub async fn structured<T: DeserializeOwned>(
    llm: &Service,
    name: &str,
    schema: Value,
    system: &str,
    user: Value,
    idempotency_key: &str,
) -> Result<T, StepError> {
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": true, "schema": schema},
        },
    });
    let completion: Completion = llm
        .post("/v1/chat/completions", &body, Some(idempotency_key))
        .await?;
    let invalid = |why: String| {
        StepError::non_retriable(format!("the model's {name} output is not usable: {why}"))
            .named("InvalidModelOutput")
    };
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(invalid("the completion has no choices".into()));
    };
    if let Some(refusal) = choice.message.refusal {
        return Err(invalid(format!("the model refused: {refusal}")));
    }
    if choice.finish_reason.as_deref() == Some("length") {
        return Err(invalid("it was cut off at the token limit".into()));
    }
    let content = choice.message.content.unwrap_or_default();
    serde_json::from_str(&content).map_err(|e| {
        let start: String = content.chars().take(80).collect();
        invalid(format!("{e} (it starts {start:?})"))
    })
}
