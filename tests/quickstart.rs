//! The README's first command, as a test: the quickstart's story runs to its checked end.

#[path = "../examples/quickstart/main.rs"]
#[allow(dead_code)] // its `main` is for `cargo run --example quickstart`
mod quickstart;

#[tokio::test]
async fn quickstart_runs_its_story_to_the_expected_end() {
    quickstart::run().await.expect("the quickstart's story");
}
