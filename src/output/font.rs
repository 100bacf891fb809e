//! A 3 × 5 bitmap font, drawn at twice its size, for the text strip under a
//! preview (the QC numbers): the PNG path has no font, and a few dozen glyphs
//! as data are simpler than a dependency. Lower case is drawn as upper case;
//! characters without a glyph are drawn as a blank.

/// Pixels per font pixel.
const SCALE: usize = 2;
const GLYPH_W: usize = 3;
const GLYPH_H: usize = 5;
/// Horizontal and vertical advance, in image pixels.
const ADVANCE: usize = (GLYPH_W + 1) * SCALE;
const LINE: usize = (GLYPH_H + 2) * SCALE;
const MARGIN: usize = 4;

/// Each glyph's five rows, three bits each (0b100 = left column).
const GLYPHS: &[(char, [u8; 5])] = &[
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b010, 0b010, 0b010]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('A', [0b010, 0b101, 0b111, 0b101, 0b101]),
    ('B', [0b110, 0b101, 0b110, 0b101, 0b110]),
    ('C', [0b011, 0b100, 0b100, 0b100, 0b011]),
    ('D', [0b110, 0b101, 0b101, 0b101, 0b110]),
    ('E', [0b111, 0b100, 0b110, 0b100, 0b111]),
    ('F', [0b111, 0b100, 0b110, 0b100, 0b100]),
    ('G', [0b011, 0b100, 0b101, 0b101, 0b011]),
    ('H', [0b101, 0b101, 0b111, 0b101, 0b101]),
    ('I', [0b111, 0b010, 0b010, 0b010, 0b111]),
    ('J', [0b001, 0b001, 0b001, 0b101, 0b010]),
    ('K', [0b101, 0b101, 0b110, 0b101, 0b101]),
    ('L', [0b100, 0b100, 0b100, 0b100, 0b111]),
    ('M', [0b101, 0b111, 0b111, 0b101, 0b101]),
    ('N', [0b110, 0b101, 0b101, 0b101, 0b101]),
    ('O', [0b010, 0b101, 0b101, 0b101, 0b010]),
    ('P', [0b110, 0b101, 0b110, 0b100, 0b100]),
    ('Q', [0b010, 0b101, 0b101, 0b110, 0b011]),
    ('R', [0b110, 0b101, 0b110, 0b101, 0b101]),
    ('S', [0b011, 0b100, 0b010, 0b001, 0b110]),
    ('T', [0b111, 0b010, 0b010, 0b010, 0b010]),
    ('U', [0b101, 0b101, 0b101, 0b101, 0b111]),
    ('V', [0b101, 0b101, 0b101, 0b101, 0b010]),
    ('W', [0b101, 0b101, 0b111, 0b111, 0b101]),
    ('X', [0b101, 0b101, 0b010, 0b101, 0b101]),
    ('Y', [0b101, 0b101, 0b010, 0b010, 0b010]),
    ('Z', [0b111, 0b001, 0b010, 0b100, 0b111]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
    (',', [0b000, 0b000, 0b000, 0b010, 0b100]),
    (':', [0b000, 0b010, 0b000, 0b010, 0b000]),
    ('-', [0b000, 0b000, 0b111, 0b000, 0b000]),
    ('+', [0b000, 0b010, 0b111, 0b010, 0b000]),
    ('=', [0b000, 0b111, 0b000, 0b111, 0b000]),
    ('%', [0b101, 0b001, 0b010, 0b100, 0b101]),
    ('/', [0b001, 0b001, 0b010, 0b100, 0b100]),
    ('(', [0b010, 0b100, 0b100, 0b100, 0b010]),
    (')', [0b010, 0b001, 0b001, 0b001, 0b010]),
];

/// Height of a strip holding `lines` lines of text (0 for none).
pub fn strip_height(lines: usize) -> usize {
    if lines == 0 {
        0
    } else {
        lines * LINE + 2 * MARGIN
    }
}

/// Draws `lines` in white on the black strip that starts at row `top` of an
/// RGB image `width` pixels wide; text past the right edge is cut.
pub fn draw_lines(rgb: &mut [u8], width: usize, top: usize, lines: &[String]) {
    for (n, line) in lines.iter().enumerate() {
        let y0 = top + MARGIN + n * LINE;
        for (k, ch) in line.chars().enumerate() {
            let x0 = MARGIN + k * ADVANCE;
            if x0 + GLYPH_W * SCALE > width {
                break;
            }
            let Some((_, rows)) = GLYPHS.iter().find(|(c, _)| *c == ch.to_ascii_uppercase()) else {
                continue;
            };
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - gx) & 1 == 0 {
                        continue;
                    }
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let (x, y) = (x0 + gx * SCALE + dx, y0 + gy * SCALE + dy);
                            let offset = (y * width + x) * 3;
                            if let Some(pixel) = rgb.get_mut(offset..offset + 3) {
                                pixel.copy_from_slice(&[255, 255, 255]);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_inside_the_strip_and_cut_at_the_edge() {
        let width = 40;
        let height = strip_height(1);
        let mut rgb = vec![0u8; width * height * 3];
        draw_lines(&mut rgb, width, 0, &["QC 1.5% PASS FLAGGED".to_string()]);
        let lit = rgb.chunks(3).filter(|p| p[0] == 255).count();
        assert!(lit > 20, "{lit} pixels lit");
        // 'Q' at the left margin: its top row is 0b010 → the middle column.
        let at = |x: usize, y: usize| rgb[(y * width + x) * 3];
        assert_eq!((at(MARGIN, MARGIN), at(MARGIN + SCALE, MARGIN)), (0, 255));
    }
}
