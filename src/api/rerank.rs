//! Rerank and score, as the engines take them: the Jina/Cohere rerank request (`{model, query, documents, top_n}`
//! → `{results: [{index, relevance_score}]}`, sorted by score, `top_n` first; llama-server and vLLM both serve it)
//! and vLLM's score request (`{model, text_1, text_2}` → `{data: [{index, object: "score", score}]}`, in input
//! order). Both are checked here before a runner is started, so that bad input is the caller's 400 and not an
//! engine's 500 (llama-server answers a negative `top_n` with a 500). For an engine without `/score` (llama.cpp)
//! a score request is translated into reranks ([`Score::reranks`]) and their results back ([`Score::answer`]).
//! No I/O here.

use serde::{Deserialize, Serialize};

/// The fields of a rerank request that are checked; the body itself goes to the engine untouched.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// Kept as sent, so that a wrong type can be named.
    #[serde(default)]
    pub query: Option<serde_json::Value>,
    #[serde(default)]
    pub documents: Option<serde_json::Value>,
    #[serde(default)]
    pub top_n: Option<serde_json::Value>,
}

/// A rerank request that passed [`RerankRequest::check`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rerank {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    pub top_n: usize,
}

impl RerankRequest {
    /// The request, or the first reason it cannot be served: a missing `model` or `query`, a `query` that is not
    /// a string, `documents` that are not a non-empty array of strings, a `top_n` that is not a positive integer.
    pub fn check(self) -> Result<Rerank, String> {
        let model = required_model(self.model)?;
        let query = match self.query {
            Some(serde_json::Value::String(q)) => q,
            None | Some(serde_json::Value::Null) => return Err("\"query\" is required".into()),
            Some(other) => {
                return Err(format!(
                    "\"query\" must be a string, not {}",
                    kind_of(&other)
                ))
            }
        };
        let documents = strings("documents", self.documents)?;
        let top_n = match self.top_n {
            None | Some(serde_json::Value::Null) => documents.len(),
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .ok_or_else(|| format!("\"top_n\" must be a positive integer, not {v}"))?,
        };
        Ok(Rerank {
            model,
            query,
            documents,
            top_n,
        })
    }
}

/// The fields of vLLM's score request.
#[derive(Debug, Deserialize)]
pub struct ScoreRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub text_1: Option<serde_json::Value>,
    #[serde(default)]
    pub text_2: Option<serde_json::Value>,
}

/// A score request that passed [`ScoreRequest::check`]: `text_1` has one text (scored against each of `text_2`)
/// or as many as `text_2` (scored pairwise), vLLM's 1:1, 1:N and N:N.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub model: String,
    pub text_1: Vec<String>,
    pub text_2: Vec<String>,
}

impl ScoreRequest {
    pub fn check(self) -> Result<Score, String> {
        let model = required_model(self.model)?;
        let text_1 = one_or_many("text_1", self.text_1)?;
        let text_2 = one_or_many("text_2", self.text_2)?;
        if text_1.len() != 1 && text_1.len() != text_2.len() {
            return Err(format!(
                "\"text_1\" has {} texts and \"text_2\" {}: give one text_1, or as many as text_2 (1:1, 1:N or N:N)",
                text_1.len(),
                text_2.len()
            ));
        }
        Ok(Score {
            model,
            text_1,
            text_2,
        })
    }
}

/// One rerank sent to the engine for a score request, and where its results go: result `index` i is pair
/// `first + i`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RerankCall {
    #[serde(skip)]
    pub first: usize,
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    pub top_n: usize,
}

/// An engine's rerank answer, as far as it is read.
#[derive(Debug, Clone, Deserialize)]
pub struct RerankAnswer {
    pub results: Vec<RerankResult>,
    #[serde(default)]
    pub usage: Option<RerankUsage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RerankUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

/// vLLM's score answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreAnswer {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: ScoreUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreData {
    pub index: usize,
    pub object: String,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
}

impl Score {
    /// How many pairs are scored.
    pub fn pairs(&self) -> usize {
        self.text_2.len()
    }

    /// The reranks that give every pair's score: one rerank of all of `text_2` when `text_1` is one text, else
    /// one rerank per pair (each pair has its own query). Every result is asked for (`top_n` = documents).
    pub fn reranks(&self) -> Vec<RerankCall> {
        if self.text_1.len() == 1 {
            return vec![RerankCall {
                first: 0,
                model: self.model.clone(),
                query: self.text_1[0].clone(),
                documents: self.text_2.clone(),
                top_n: self.text_2.len(),
            }];
        }
        self.text_1
            .iter()
            .zip(&self.text_2)
            .enumerate()
            .map(|(i, (q, d))| RerankCall {
                first: i,
                model: self.model.clone(),
                query: q.clone(),
                documents: vec![d.clone()],
                top_n: 1,
            })
            .collect()
    }

    /// The score answer from the reranks' answers (each with its call), in input order: `data[i]` is pair i.
    /// An answer that misses a pair or names one out of range is the engine's fault (an error).
    pub fn answer(
        &self,
        answers: &[(RerankCall, RerankAnswer)],
        id: String,
        created: i64,
        model: &str,
    ) -> Result<ScoreAnswer, String> {
        let mut scores: Vec<Option<f64>> = vec![None; self.pairs()];
        let mut tokens = 0;
        for (call, answer) in answers {
            for r in &answer.results {
                let at = (r.index < call.documents.len())
                    .then(|| call.first + r.index)
                    .filter(|at| *at < scores.len())
                    .ok_or_else(|| {
                        format!(
                            "the engine's rerank answer names document {} of {}",
                            r.index,
                            call.documents.len()
                        )
                    })?;
                scores[at] = Some(r.relevance_score);
            }
            let usage = answer.usage.clone().unwrap_or_default();
            tokens += usage.prompt_tokens.or(usage.total_tokens).unwrap_or(0);
        }
        let data = scores
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                s.map(|score| ScoreData {
                    index,
                    object: "score".into(),
                    score,
                })
                .ok_or_else(|| {
                    format!("the engine's rerank answers give no score for pair {index}")
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ScoreAnswer {
            id,
            object: "list".into(),
            created,
            model: model.to_string(),
            data,
            usage: ScoreUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                completion_tokens: 0,
            },
        })
    }
}

/// The body of a tokenize or detokenize request, as far as the front reads it: the model that picks the runner.
#[derive(Debug, Deserialize)]
pub struct ModelOnly {
    #[serde(default)]
    pub model: Option<String>,
}

fn required_model(model: Option<String>) -> Result<String, String> {
    model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| "\"model\" is required".to_string())
}

/// A non-empty array of strings.
fn strings(field: &str, value: Option<serde_json::Value>) -> Result<Vec<String>, String> {
    let items = match value {
        None | Some(serde_json::Value::Null) => return Err(format!("\"{field}\" is required")),
        Some(serde_json::Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "\"{field}\" must be an array of strings, not {}",
                kind_of(&other)
            ))
        }
    };
    if items.is_empty() {
        return Err(format!("\"{field}\" must not be empty"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(format!(
                "\"{field}\"[{i}] must be a string, not {}",
                kind_of(&other)
            )),
        })
        .collect()
}

/// A string, or a non-empty array of strings.
fn one_or_many(field: &str, value: Option<serde_json::Value>) -> Result<Vec<String>, String> {
    match value {
        Some(serde_json::Value::String(s)) => Ok(vec![s]),
        other => strings(field, other).map_err(|e| {
            if e.contains("must be an array") {
                format!("\"{field}\" must be a string or an array of strings")
            } else {
                e
            }
        }),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rerank(v: serde_json::Value) -> Result<Rerank, String> {
        serde_json::from_value::<RerankRequest>(v).unwrap().check()
    }

    fn score(v: serde_json::Value) -> Result<Score, String> {
        serde_json::from_value::<ScoreRequest>(v).unwrap().check()
    }

    #[test]
    fn a_rerank_needs_a_model_a_string_query_and_strings_to_rank() {
        let ok =
            rerank(json!({"model": "m", "query": "q", "documents": ["a", "b", "c"], "top_n": 2}))
                .unwrap();
        assert_eq!(ok.documents, ["a", "b", "c"]);
        assert_eq!(ok.top_n, 2);
        assert_eq!(
            rerank(json!({"model": "m", "query": "q", "documents": ["a"]}))
                .unwrap()
                .top_n,
            1,
            "all documents by default"
        );
        for (body, says) in [
            (
                json!({"query": "q", "documents": ["a"]}),
                "\"model\" is required",
            ),
            (
                json!({"model": "", "query": "q", "documents": ["a"]}),
                "\"model\" is required",
            ),
            (
                json!({"model": "m", "documents": ["a"]}),
                "\"query\" is required",
            ),
            (
                json!({"model": "m", "query": 7, "documents": ["a"]}),
                "\"query\" must be a string, not a number",
            ),
            (
                json!({"model": "m", "query": "q"}),
                "\"documents\" is required",
            ),
            (
                json!({"model": "m", "query": "q", "documents": []}),
                "\"documents\" must not be empty",
            ),
            (
                json!({"model": "m", "query": "q", "documents": "a"}),
                "must be an array of strings, not a string",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}]}),
                "\"documents\"[1] must be a string, not an object",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 0}),
                "\"top_n\" must be a positive integer",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a"], "top_n": -1}),
                "\"top_n\" must be a positive integer",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 1.5}),
                "\"top_n\" must be a positive integer",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a"], "top_n": "2"}),
                "\"top_n\" must be a positive integer",
            ),
        ] {
            let err = rerank(body.clone()).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn a_score_takes_vllms_one_to_one_one_to_many_and_many_to_many() {
        let s = score(json!({"model": "m", "text_1": "q", "text_2": "d"})).unwrap();
        assert_eq!((s.text_1.len(), s.pairs()), (1, 1));
        let s = score(json!({"model": "m", "text_1": ["q"], "text_2": ["a", "b"]})).unwrap();
        assert_eq!(s.pairs(), 2);
        let s = score(json!({"model": "m", "text_1": ["q1", "q2"], "text_2": ["a", "b"]})).unwrap();
        assert_eq!(s.text_1, ["q1", "q2"]);
        for (body, says) in [
            (
                json!({"model": "m", "text_2": "d"}),
                "\"text_1\" is required",
            ),
            (
                json!({"model": "m", "text_1": "q"}),
                "\"text_2\" is required",
            ),
            (
                json!({"model": "m", "text_1": "q", "text_2": []}),
                "\"text_2\" must not be empty",
            ),
            (
                json!({"model": "m", "text_1": 1, "text_2": "d"}),
                "\"text_1\" must be a string or an array of strings",
            ),
            (
                json!({"model": "m", "text_1": "q", "text_2": ["a", 2]}),
                "\"text_2\"[1] must be a string",
            ),
            (
                json!({"model": "m", "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
                "1:1, 1:N or N:N",
            ),
            (
                json!({"text_1": "q", "text_2": "d"}),
                "\"model\" is required",
            ),
        ] {
            let err = score(body.clone()).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
    }

    fn answer(results: &[(usize, f64)], tokens: u64) -> RerankAnswer {
        serde_json::from_value(json!({
            "model": "m", "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results.iter().map(|(i, s)| json!({"index": i, "relevance_score": s})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn one_query_is_one_rerank_whose_sorted_results_go_back_to_input_order() {
        let s = score(json!({"model": "ai/r", "text_1": "q", "text_2": ["a", "b", "c"]})).unwrap();
        let calls = s.reranks();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            serde_json::to_value(&calls[0]).unwrap(),
            json!({"model": "ai/r", "query": "q", "documents": ["a", "b", "c"], "top_n": 3}),
            "a rerank body, every document asked for"
        );
        // The engine answers sorted by score.
        let got = s
            .answer(
                &[(
                    calls[0].clone(),
                    answer(&[(2, 0.9), (0, 0.5), (1, -0.25)], 12),
                )],
                "score-1".into(),
                7,
                "ai/r",
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!({"id": "score-1", "object": "list", "created": 7, "model": "ai/r",
                   "data": [{"index": 0, "object": "score", "score": 0.5},
                            {"index": 1, "object": "score", "score": -0.25},
                            {"index": 2, "object": "score", "score": 0.9}],
                   "usage": {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0}})
        );
    }

    #[test]
    fn pairs_with_their_own_queries_are_one_rerank_each() {
        let s = score(json!({"model": "m", "text_1": ["q1", "q2"], "text_2": ["a", "b"]})).unwrap();
        let calls = s.reranks();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (
                calls[1].first,
                calls[1].query.as_str(),
                &calls[1].documents[..]
            ),
            (1, "q2", &["b".to_string()][..])
        );
        let answers = [
            (calls[0].clone(), answer(&[(0, 0.1)], 3)),
            (calls[1].clone(), answer(&[(0, 0.2)], 4)),
        ];
        let got = s.answer(&answers, "id".into(), 0, "m").unwrap();
        assert_eq!(
            got.data.iter().map(|d| d.score).collect::<Vec<_>>(),
            [0.1, 0.2]
        );
        assert_eq!(got.usage.prompt_tokens, 7);
    }

    #[test]
    fn an_engine_answer_that_misses_or_invents_a_pair_is_an_error() {
        let s = score(json!({"model": "m", "text_1": "q", "text_2": ["a", "b"]})).unwrap();
        let call = s.reranks().remove(0);
        let missing = s.answer(
            &[(call.clone(), answer(&[(1, 0.3)], 1))],
            "id".into(),
            0,
            "m",
        );
        assert!(missing.unwrap_err().contains("no score for pair 0"));
        let invented = s.answer(
            &[(call, answer(&[(0, 0.3), (5, 0.1)], 1))],
            "id".into(),
            0,
            "m",
        );
        assert!(invented.unwrap_err().contains("document 5 of 2"));
    }
}
