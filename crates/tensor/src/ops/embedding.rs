//! Embedding lookup (gather rows of a table) and its backward (scatter-add
//! the output gradient into the looked-up rows).

use super::{check_len, rows_of};
use crate::error::{shape_err, Result};
use crate::Element;

fn check_ids(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= rows) {
        Some(i) => Err(shape_err(
            op,
            format!(
                "id {} at position {i} is outside the table of {rows} rows",
                ids[i]
            ),
        )),
        None => Ok(()),
    }
}

/// `out[i] = table[ids[i]]` for rows of `d`, widened to f32 from a 16-bit table.
pub fn embedding_forward<E: Element>(
    out: &mut [f32],
    table: &[E],
    ids: &[u32],
    d: usize,
) -> Result<()> {
    let rows = rows_of("embedding_forward", "table", table.len(), d)?;
    check_len("embedding_forward", "out", out.len(), ids.len() * d)?;
    check_ids("embedding_forward", ids, rows)?;
    for (o, &id) in out.chunks_mut(d).zip(ids) {
        let id = id as usize;
        E::slice_to_f32(&table[id * d..(id + 1) * d], o);
    }
    Ok(())
}

/// `dtable[ids[i]] += dout[i]`, in position order (so repeated ids sum deterministically).
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) -> Result<()> {
    let rows = rows_of("embedding_backward", "dtable", dtable.len(), d)?;
    check_len("embedding_backward", "dout", dout.len(), ids.len() * d)?;
    check_ids("embedding_backward", ids, rows)?;
    for (g, &id) in dout.chunks(d).zip(ids) {
        let id = id as usize;
        for (a, b) in dtable[id * d..(id + 1) * d].iter_mut().zip(g) {
            *a += b;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_add() {
        let table = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 6];
        embedding_forward(&mut out, &table, &[2, 0, 2], 2).unwrap();
        assert_eq!(out, [5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
        let mut d = [0.0; 6];
        embedding_backward(&mut d, &[1.0; 6], &[2, 0, 2], 2).unwrap();
        assert_eq!(d, [1.0, 1.0, 0.0, 0.0, 2.0, 2.0]);
        assert!(embedding_forward(&mut out, &table, &[3, 0, 0], 2).is_err());
    }
}
