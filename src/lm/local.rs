//! [`Lm`] for the in-process model: scoring by [`crate::score`]'s batched forward pass with
//! prefix reuse, decoding by [`super::sample`].
use super::{Generated, Lm};
use crate::model::radix::PrefixCache;
use crate::model::Model;
use crate::recipe::generate::Sampling;
use crate::score::{OptionScores, ScoreRequest, Scorer};
use crate::util::error::Result;
use crate::util::manifest::ModelInfo;
use rand_chacha::ChaCha8Rng;

impl Lm for Model {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn scoring_id(&self) -> String {
        Model::scoring_id(self)
    }

    fn is_chat(&self) -> bool {
        Model::is_chat(self)
    }

    fn render_chat(&self, user: &str) -> Result<String> {
        Model::render_chat(self, user)
    }

    fn score(&self, items: &[ScoreRequest], cache: &mut PrefixCache) -> Result<Vec<OptionScores>> {
        self.score_batch_cached(items, cache)
    }

    fn complete(&self, prompt: &str, s: &Sampling, rng: &mut ChaCha8Rng) -> Result<Generated> {
        super::sample::generate(self, prompt, s, rng)
    }
}
