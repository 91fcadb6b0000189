//! An LLM chat API in the OpenAI style: `POST /v1/chat/completions` with a JSON-schema
//! response format (`response_format.json_schema.name`) answers a completion whose message
//! content is the structured output, as a JSON string. Deterministic, by schema:
//!
//! - `interview_outline`: the user message is `{"topic", "angle"?, "guest"?}`; three segments.
//! - `interview_script`: the user message is `{"outline"}`; a host/guest dialogue: an intro, a
//!   question and an answer per outline segment, an outro.
//! - `debate_outline`: `{"topic", "angle"?, "for"?, "against"?}`; a motion, two sides, three
//!   rounds. `debate_script`: `{"outline"}`; a moderator and the two sides, round by round.
//! - `adventure_outline`: `{"topic", "protagonist"?}`; a premise and seven story nodes, each
//!   with the choices that lead on (a start, two paths, four endings). `adventure_script`:
//!   `{"outline"}`; each node's narration.
//! - `transcript_parse`: the user message is the transcript (lines `Speaker: text`), or a
//!   `file_url` content part (the model fetches the file itself, as Gemini's file parts do);
//!   speakers, timed segments, a summary and action items.
//!
//! Inputs that make it misbehave: a user message containing `garble` gets prose instead of
//! JSON (a model that ignores the schema: the workloads must refuse it); an empty user message,
//! an unknown schema or a `file_url` containing `missing` get 400 with the reason. Faults are
//! injected on the route `llm/chat`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeState, error};

/// What the fake model says to an input containing `garble`: prose, not the JSON asked for.
pub const GARBLED_OUTPUT: &str =
    "Sure! Here is a summary of the call: the team discussed pricing and next steps.";

pub(crate) fn router() -> Router<Arc<FakeState>> {
    Router::new().route("/v1/chat/completions", post(chat))
}

async fn chat(State(state): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if let Some(fault) = state.enter("llm/chat").await {
        return fault;
    }
    let Some(schema) = body["response_format"]["json_schema"]["name"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "response_format.json_schema.name is required (this model answers structured output only)",
        );
    };
    let Some(user) = body["messages"].as_array().and_then(|m| {
        m.iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| &m["content"])
    }) else {
        return error(StatusCode::BAD_REQUEST, "messages must hold a user message");
    };
    // The content: a string, or parts (`text`, `file_url`).
    let (text, file_url) = match user {
        Value::String(s) => (s.clone(), None),
        Value::Array(parts) => {
            let text = parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n");
            let url = parts
                .iter()
                .find_map(|p| p["file_url"]["url"].as_str())
                .map(str::to_owned);
            (text, url)
        }
        _ => (String::new(), None),
    };
    if text.trim().is_empty() && file_url.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "the user message is empty: there is nothing to work on",
        );
    }
    let output = if text.contains("garble") {
        Ok(Value::String(GARBLED_OUTPUT.into()))
    } else {
        match schema {
            "interview_outline" => outline(&text),
            "interview_script" => script(&text),
            "debate_outline" => debate_outline(&text),
            "debate_script" => debate_script(&text),
            "adventure_outline" => adventure_outline(&text),
            "adventure_script" => adventure_script(&text),
            "transcript_parse" => transcript(&text, file_url.as_deref()),
            other => Err(format!("unknown response schema {other:?}")),
        }
    };
    let content = match output {
        Ok(Value::String(prose)) => prose,
        Ok(value) => value.to_string(),
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let prompt_tokens = text.split_whitespace().count();
    let completion_tokens = content.split_whitespace().count();
    Json(json!({
        "id": format!("chatcmpl-{}", state.calls("llm/chat")),
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

fn input(text: &str) -> Result<Value, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("the user message is not the JSON expected: {e}"))
}

fn outline(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let topic = input["topic"].as_str().unwrap_or_default().trim();
    if topic.is_empty() {
        return Err("topic is required".into());
    }
    let guest = input["guest"].as_str().unwrap_or("a historian");
    let angle = input["angle"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("why {topic} still matters"));
    let segments: Vec<Value> = ["origins", "turning point", "legacy"]
        .iter()
        .map(|part| {
            json!({
                "heading": format!("{topic}: {part}"),
                "points": [format!("what {guest} saw of the {part}"), format!("the {part} in numbers")],
            })
        })
        .collect();
    Ok(json!({
        "title": format!("{topic}, with {guest}"),
        "angle": angle,
        "guest": {"name": guest, "role": "guest expert"},
        "segments": segments,
        "sources": [format!("https://encyclopedia.example/{}", slug(topic))],
    }))
}

fn script(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let outline = &input["outline"];
    let Some(segments) = outline["segments"].as_array().filter(|s| !s.is_empty()) else {
        return Err("outline.segments must be a non-empty array".into());
    };
    let title = outline["title"].as_str().unwrap_or("this episode");
    let guest = outline["guest"]["name"].as_str().unwrap_or("our guest");
    let mut lines = vec![
        json!({"speaker": "host", "text": format!("Welcome to {title}. My guest today is {guest}.")}),
    ];
    for segment in segments {
        let heading = segment["heading"].as_str().unwrap_or("the next part");
        lines.push(json!({"speaker": "host", "text": format!("Let's talk about {heading}. What happened?")}));
        lines.push(json!({"speaker": "guest", "text": format!("{heading} is a story of people, places and a few lucky accidents.")}));
    }
    lines.push(
        json!({"speaker": "host", "text": format!("Thank you, {guest}. That's all for today.")}),
    );
    let total_words = words_of(&lines);
    Ok(json!({"lines": lines, "total_words": total_words}))
}

fn words_of(lines: &[Value]) -> usize {
    lines
        .iter()
        .map(|l| {
            l["text"]
                .as_str()
                .or(l["narration"].as_str())
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

fn topic_of(input: &Value) -> Result<String, String> {
    let topic = input["topic"].as_str().unwrap_or_default().trim();
    if topic.is_empty() {
        return Err("topic is required".into());
    }
    Ok(topic.to_owned())
}

fn debate_outline(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let topic = topic_of(&input)?;
    let pro = input["for"].as_str().unwrap_or("an optimist");
    let con = input["against"].as_str().unwrap_or("a sceptic");
    let rounds: Vec<Value> = ["opening statements", "rebuttals", "closing statements"]
        .iter()
        .map(|round| json!({"heading": round, "points": [format!("{round} on {topic}")]}))
        .collect();
    Ok(json!({
        "title": format!("Debate: {topic}"),
        "motion": input["angle"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{topic} did more good than harm")),
        "sides": [
            {"name": pro, "role": "argues for", "position": "for"},
            {"name": con, "role": "argues against", "position": "against"},
        ],
        "rounds": rounds,
        "sources": [format!("https://encyclopedia.example/{}", slug(&topic))],
    }))
}

fn debate_script(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let outline = &input["outline"];
    let Some(rounds) = outline["rounds"].as_array().filter(|r| !r.is_empty()) else {
        return Err("outline.rounds must be a non-empty array".into());
    };
    let motion = outline["motion"].as_str().unwrap_or("the motion");
    let mut lines =
        vec![json!({"speaker": "moderator", "text": format!("Tonight's motion: {motion}.")})];
    for round in rounds {
        let heading = round["heading"].as_str().unwrap_or("the next round");
        lines.push(json!({"speaker": "moderator", "text": format!("Time for {heading}.")}));
        lines.push(
            json!({"speaker": "for", "text": format!("In {heading}, I hold that {motion}.")}),
        );
        lines.push(json!({"speaker": "against", "text": format!("In {heading}, I say the evidence points the other way.")}));
    }
    lines.push(json!({"speaker": "moderator", "text": "Thank you both. The audience decides."}));
    let total_words = words_of(&lines);
    Ok(json!({"lines": lines, "total_words": total_words}))
}

fn adventure_outline(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let topic = topic_of(&input)?;
    let hero = input["protagonist"].as_str().unwrap_or("a young scribe");
    let node = |id: &str, title: String, choices: Vec<(&str, &str)>| {
        json!({
            "id": id,
            "title": title,
            "summary": format!("{hero} and {topic}: {id}"),
            "choices": choices.iter().map(|(label, next)| json!({"label": label, "next": next})).collect::<Vec<_>>(),
        })
    };
    Ok(json!({
        "title": format!("Choose your path: {topic}"),
        "premise": format!("{hero} is caught up in {topic}."),
        "nodes": [
            node("start", format!("{topic} begins"), vec![("Follow the crowd", "crowd"), ("Take the back roads", "roads")]),
            node("crowd", "Into the crowd".into(), vec![("Speak up", "end-hero"), ("Stay quiet", "end-witness")]),
            node("roads", "Along the back roads".into(), vec![("Press on", "end-explorer"), ("Turn back", "end-home")]),
            node("end-hero", "The hero's ending".into(), vec![]),
            node("end-witness", "The witness's ending".into(), vec![]),
            node("end-explorer", "The explorer's ending".into(), vec![]),
            node("end-home", "The homecoming".into(), vec![]),
        ],
    }))
}

fn adventure_script(text: &str) -> Result<Value, String> {
    let input = input(text)?;
    let Some(nodes) = input["outline"]["nodes"]
        .as_array()
        .filter(|n| !n.is_empty())
    else {
        return Err("outline.nodes must be a non-empty array".into());
    };
    let scripted: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let title = n["title"].as_str().unwrap_or("a turn in the story");
            let summary = n["summary"].as_str().unwrap_or_default();
            json!({
                "id": n["id"],
                "narration": format!("{title}. {summary}. What happens next is up to you."),
                "choices": n["choices"],
            })
        })
        .collect();
    let total_words = words_of(&scripted);
    Ok(json!({"nodes": scripted, "total_words": total_words}))
}

fn transcript(text: &str, file_url: Option<&str>) -> Result<Value, String> {
    let fetched;
    let text = match file_url {
        Some(url) if url.contains("missing") => {
            return Err(format!("could not fetch file_url {url}: 404 Not Found"));
        }
        Some(url) => {
            fetched = format!(
                "Alex: Thanks for joining, this call is about {url}.\n\
                 Sam: Happy to. We need the pilot live before the quarter ends.\n\
                 Alex: Then we send the contract on Friday.\n\
                 Sam: Agreed, and I'll loop in our security team."
            );
            fetched.as_str()
        }
        None => text,
    };
    let mut speakers: Vec<String> = Vec::new();
    let mut segments = Vec::new();
    let mut clock = 0.0_f64;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (speaker, said) = match line.split_once(':') {
            Some((who, said)) if !who.trim().is_empty() && who.len() <= 40 => {
                (who.trim().to_owned(), said.trim().to_owned())
            }
            _ => ("Unknown".to_owned(), line.to_owned()),
        };
        if !speakers.contains(&speaker) {
            speakers.push(speaker.clone());
        }
        let words = said.split_whitespace().count() as f64;
        segments.push(json!({"speaker": speaker, "start_s": clock, "text": said}));
        clock += (words / 2.5 * 10.0).round() / 10.0;
    }
    let summary = segments
        .iter()
        .filter_map(|s| s["text"].as_str())
        .flat_map(str::split_whitespace)
        .take(24)
        .collect::<Vec<_>>()
        .join(" ");
    let action_items: Vec<String> = segments
        .iter()
        .filter_map(|s| s["text"].as_str())
        .filter(|t| {
            let t = t.to_lowercase();
            t.contains("we need")
                || t.contains("i'll")
                || t.contains("we send")
                || t.contains("will ")
        })
        .map(str::to_owned)
        .collect();
    Ok(json!({
        "speakers": speakers,
        "segments": segments,
        "summary": summary,
        "action_items": action_items,
        "duration_s": clock,
    }))
}

fn slug(s: &str) -> String {
    s.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
