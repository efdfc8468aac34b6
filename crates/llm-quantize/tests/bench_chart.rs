//! `bench --chart FILE.svg` / `FILE.png`: two quantized files of the shared llama, a
//! short speed test and a short KL pass, drawn as one point per model in each panel; a
//! PNG is the same chart rasterised; a chart path that is neither `.svg` nor `.png` is
//! refused before anything is measured.

mod common;
use common::*;

#[test]
fn chart_has_a_point_per_model_and_panel() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = shared_model("llama");
    let llama = llama.to_str().unwrap();
    for l in ["Q8_0", "Q4_K_M"] {
        let r = lq(
            tmp.path(),
            &[
                "quantize",
                llama,
                "gguf",
                "-q",
                l,
                "-o",
                ".",
                "-n",
                &format!("{l}.gguf"),
                "--no-checkpoints",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let test = shared().join("data/corpus/test.txt");
    let args = |chart: &str| -> Vec<String> {
        [
            "--format",
            "json",
            "bench",
            "--models",
            "Q8_0.gguf,Q4_K_M.gguf",
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
            "--device",
            "cpu",
            "--dataset",
            test.to_str().unwrap(),
            "--samples",
            "2",
            "--max-length",
            "64",
            "--base",
            llama,
            "--chart",
            chart,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("frontier.jpg");
    let r = lq(
        tmp.path(),
        &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // PNG: the same chart rasterised at twice the SVG's 980×440
    let a = args("frontier.png");
    let r = lq(
        tmp.path(),
        &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let png = std::fs::read(tmp.path().join("frontier.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1960);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 880);
    let a = args("frontier.svg");
    let r = lq(
        tmp.path(),
        &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let svg = std::fs::read_to_string(tmp.path().join("frontier.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // two models in each of the two panels, plus one legend entry (one series: GGUF)
    assert_eq!(svg.matches("<circle").count(), 5, "{svg}");
    for row in j["models"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        assert_eq!(svg.matches(&format!(">{name}</text>")).count(), 2, "{name}");
        assert!(row["quality"]["mean_kl_divergence"].as_f64().unwrap() > 0.0);
    }
}
