//! The README's first command, as a test: the quickstart's story runs to its checked end.

#[tokio::test]
async fn quickstart_runs_its_story_to_the_expected_end() {
    courier_quickstart::run()
        .await
        .expect("the quickstart's story");
}
