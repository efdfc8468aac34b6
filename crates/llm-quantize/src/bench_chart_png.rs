//! `bench --chart FILE.png`: the chart of [`crate::bench_chart`] rasterised by `resvg`
//! (its SVG parsed by `usvg`, drawn by `tiny-skia`, encoded as PNG) at twice the SVG's
//! size. Labels are drawn with the system's fonts (`fontdb`, loaded at run time; the
//! chart's `sans-serif` is mapped to the first common sans face found); a machine
//! without any draws the lines and points without text.

/// The PNG bytes of an SVG document.
pub fn png_of_svg(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    // the chart asks for `sans-serif`: the first common sans face installed, else any
    let families: Vec<String> = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(n, _)| n.clone()))
        .collect();
    let pick = [
        "DejaVu Sans",
        "Liberation Sans",
        "Arial",
        "Helvetica",
        "Noto Sans",
    ]
    .iter()
    .map(|s| s.to_string())
    .find(|w| families.contains(w))
    .or_else(|| families.first().cloned());
    if let Some(f) = pick {
        db.set_sans_serif_family(f.clone());
        opt.font_family = f;
    }
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| format!("chart SVG: {e}"))?;
    let scale = 2.0;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or("chart size")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("chart size is zero")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| format!("PNG: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rasterises_a_chart() {
        let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect x="0" y="0" width="20" height="20" fill="#ff0000"/></svg>"##;
        let png = png_of_svg(svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height at twice the SVG's size
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 80);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 40);
    }
}
