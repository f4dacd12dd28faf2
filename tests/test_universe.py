"""A universe of symbols: loading and alignment, the pooled env, compact features, the
portfolio money function and the universe report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pyppo import MarketDataError, TradingEnv, Universe, load_universe, synthetic_market
from pyppo.data import load_market_data
from pyppo.evaluation.backtest import backtest
from pyppo.evaluation.portfolio import portfolio_backtest
from pyppo.evaluation.universe import equal_weight, information_coefficients, weights_frame
from pyppo.loss import log_prob_and_entropy
from pyppo.model import PortfolioActorCritic, TradingActorCritic
from pyppo.portfolio import limit_weights, portfolio_step
from pyppo.portfolio_env import PortfolioEnv
from pyppo.training import PPOTrainer


def frame(n: int, seed: int, start: str = "2024-01-01", freq: str = "1h") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    idx = pd.date_range(start, periods=n, freq=freq, name="timestamp")
    return pd.DataFrame(
        {"open": close, "high": close * 1.001, "low": close * 0.999, "close": close}, idx
    )


# -- synthetic universe ------------------------------------------------------------------


def test_synthetic_universe_is_correlated_with_an_edge_per_symbol():
    universe = synthetic_market(3000, seed=2, symbols=6)
    again = synthetic_market(3000, seed=2, symbols=6)
    assert universe.symbols == ("S00", "S01", "S02", "S03", "S04", "S05")
    assert all(universe[s].frame.equals(again[s].frame) for s in universe.symbols)
    returns = np.diff(np.log(universe.aligned_close()), axis=0)
    corr = np.corrcoef(returns.T)[np.triu_indices(6, 1)]
    assert 0.2 < corr.mean() < 0.6
    # Each symbol's own momentum: its next standardized return follows its last three.
    for symbol in universe.symbols:
        r = universe[symbol].log_returns.numpy()[1:]
        z = r / pd.Series(r).ewm(span=60).std().shift(1).to_numpy()
        signal = pd.Series(z).rolling(3).sum().shift(1).to_numpy()
        ok = np.isfinite(signal) & np.isfinite(z)
        assert np.corrcoef(signal[ok], z[ok])[0, 1] > 0.03, symbol
    named = synthetic_market(500, seed=1, symbols=["BTC", "ETH"])
    assert named.symbols == ("BTC", "ETH")
    with pytest.raises(MarketDataError, match="distinct names"):
        synthetic_market(500, symbols=["A", "A"])


# -- loading -----------------------------------------------------------------------------


def test_a_universe_loads_from_a_folder_a_glob_a_list_a_long_table_and_a_dict(tmp_path):
    frames = {"AAA": frame(300, 1), "BBB": frame(300, 2), "CCC": frame(300, 3)}
    folder = tmp_path / "universe"
    folder.mkdir()
    for symbol, f in frames.items():
        f.to_csv(folder / f"{symbol}.csv")
    (folder / "notes.txt").write_text("not data")
    expected = {s: load_market_data(f, horizons=(1, 2), window=20) for s, f in frames.items()}
    long = pd.concat([f.assign(symbol=s) for s, f in frames.items()])
    long.to_csv(tmp_path / "long.csv")
    sources = [
        str(folder),
        str(folder / "*.csv"),
        ",".join(str(folder / f"{s}.csv") for s in frames),
        [folder / f"{s}.csv" for s in frames],
        str(tmp_path / "long.csv"),
        frames,
    ]
    for source in sources:
        universe = load_universe(source, horizons=(1, 2), window=20)
        assert universe.symbols == ("AAA", "BBB", "CCC"), source
        for symbol in frames:
            got = universe[symbol].frame[["open", "high", "low", "close"]]
            np.testing.assert_allclose(got.to_numpy(), expected[symbol].frame.to_numpy())


def test_a_bad_symbol_is_named_with_its_file_and_row(tmp_path):
    frames = {"AAA": frame(300, 1), "BBB": frame(300, 2)}
    frames["BBB"].iloc[17, frames["BBB"].columns.get_loc("close")] = -5.0
    for symbol, f in frames.items():
        f.to_csv(tmp_path / f"{symbol}.csv")
    with pytest.raises(MarketDataError, match=r"symbol 'BBB': .*BBB\.csv.*line 19"):
        load_universe(str(tmp_path))
    # A long table names the file line of the bad row, counted in the whole file.
    long = pd.concat([f.assign(symbol=s) for s, f in frames.items()])
    long.to_csv(tmp_path / "long.csv")
    with pytest.raises(MarketDataError, match=r"symbol 'BBB': .*long\.csv.*line 319"):
        load_universe(str(tmp_path / "long.csv"))
    with pytest.raises(MarketDataError, match=r"symbol 'BBB': DataFrame.*row 317"):
        load_universe(long.reset_index())
    with pytest.raises(MarketDataError, match="symbol 'DAY' .* has 1D bars, symbol 'AAA' has 1h"):
        load_universe({"AAA": frame(300, 1), "DAY": frame(300, 2, freq="1D")}, horizons=(1, 2))
    with pytest.raises(MarketDataError, match="no file matches"):
        load_universe(str(tmp_path / "*.parquet"))


# -- alignment ---------------------------------------------------------------------------


def aligned_universe() -> Universe:
    """Three symbols: one complete, one with missing bars, one listed late and delisted
    early."""
    full = frame(400, 1)
    gappy = frame(400, 2).drop(frame(400, 2).index[[100, 101, 250]])
    short = frame(400, 3).iloc[80:330]
    return load_universe({"FULL": full, "GAPPY": gappy, "SHORT": short}, horizons=(1, 2), window=20)


def test_alignment_marks_missing_bars_and_life():
    universe = aligned_universe()
    assert len(universe) == 400
    has, listed, close = universe.has_bar(), universe.listed(), universe.aligned_close()
    assert has[:, 0].all()
    assert not has[[100, 101, 250], 1].any() and has[[99, 102, 249, 251], 1].all()
    assert listed[:, 1].all()
    np.testing.assert_array_equal(close[[100, 101], 1], close[99, 1])  # carried, not made up
    assert not listed[:80, 2].any() and listed[80:330, 2].all() and not listed[330:, 2].any()
    assert np.isnan(close[:80, 2]).all() and np.isnan(close[330:, 2]).all()
    train, test = universe.split(0.5)
    assert train.calendar[-1] < test.calendar[0]
    assert train["SHORT"].frame.index[-1] < test["SHORT"].frame.index[0]


def test_the_pooled_env_never_trades_a_symbol_on_a_bar_without_its_price():
    universe = aligned_universe()
    env = TradingEnv(universe, num_envs=32, episode_length=10, window=20, seed=3)
    stamps = {j: universe[s].frame.index for j, s in enumerate(universe.symbols)}
    seen = set()
    env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        symbol, bar = env.symbol_index.tolist(), env.bar_index.tolist()
        for s, t in zip(symbol, bar, strict=True):
            # Every step acts on one of the symbol's own bars, inside its life.
            assert 20 <= t < len(stamps[s]) - 2
            seen.add(s)
        _, reward, *_ = env.step(torch.randint(0, 3, (32,), generator=gen))
        assert torch.isfinite(reward).all()
    assert seen == {0, 1, 2}


def test_pooled_observations_and_rewards_are_each_symbols_own():
    universe = synthetic_market(1500, seed=5, symbols=3, horizons=(1, 4))
    env = TradingEnv(universe, num_envs=12, episode_length=30, window=40, seed=1)
    singles = [
        TradingEnv(universe[s], num_envs=1, episode_length=30, window=40) for s in universe.symbols
    ]
    obs, info = env.reset()
    gen = torch.Generator().manual_seed(2)
    for _ in range(70):
        symbol, bar = env.symbol_index.tolist(), env.bar_index.tolist()
        for k, (s, t) in enumerate(zip(symbol, bar, strict=True)):
            expected = singles[s].features.observe(torch.tensor([t]), env.position[k : k + 1])
            assert torch.equal(obs[k : k + 1], expected)
            target = universe[universe.symbols[s]].forward_returns(4)[t].float()
            torch.testing.assert_close(info["aux_targets"][k, 1], target)
        actions = torch.randint(0, 3, (12,), generator=gen)
        previous = env.position.clone()
        obs, reward, _, truncated, info = env.step(actions)
        for k, (s, t) in enumerate(zip(symbol, bar, strict=True)):
            r = universe[universe.symbols[s]].log_returns[t + 1].float()
            p = float(actions[k]) - 1.0
            want = p * r - env.cost * abs(p - previous[k])
            torch.testing.assert_close(reward[k], want, rtol=1e-5, atol=1e-7)


def test_pooled_training_on_one_symbol_equals_single_asset_training():
    market = synthetic_market(3000, seed=4)

    def train(data):
        torch.manual_seed(0)
        env = TradingEnv(data, num_envs=8, episode_length=32, window=20, seed=7)
        model = TradingActorCritic(env.obs_spec, hidden_dim=16, aux_labels=env.aux_labels)
        trainer = PPOTrainer(model, env, num_steps=32, batch_size=64, num_epochs=2, progress=False)
        trainer.train(total_steps=3 * 8 * 32)
        return model.state_dict(), env

    single, env_a = train(market)
    pooled, env_b = train(Universe({"ONLY": market}))
    assert env_a.bars_per_epoch == env_b.bars_per_epoch
    for name in single:
        assert torch.equal(single[name], pooled[name]), name


# -- memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [60, 240])
def test_the_env_holds_under_80_bytes_a_bar_whatever_the_window(window):
    market = synthetic_market(6000, seed=1)
    env = TradingEnv(market, num_envs=16, episode_length=50, window=window, fill="next_open")
    env.reset()
    for _ in range(60):
        env.step(torch.randint(0, 3, (16,)))
    assert env.bytes_per_bar <= 80
    # The observation it gathers is the full row a materialized table would have held.
    assert env.obs_spec.size * 4 > 80
    universe = synthetic_market(2000, seed=1, symbols=4)
    pooled = TradingEnv(universe, num_envs=16, episode_length=50, window=window)
    pooled.reset()
    pooled.step(torch.ones(16, dtype=torch.int64))
    assert pooled.bytes_per_bar <= 80


# -- the money function --------------------------------------------------------------------


def test_portfolio_money_equals_a_hand_ledger():
    """Two symbols, A (cost 10 bps per unit of weight) and B (20 bps): five decisions."""
    cost = torch.tensor([0.001, 0.002])
    lg = math.log
    steps = [
        # previous, target, log returns, gaps, can fill, listed next, hand-computed growth
        # 1: open A long half, B short half; A +2 %, B -1 %.
        ([0, 0], [0.5, -0.5], [lg(1.02), lg(0.99)], [0, 0], [1, 1], [1, 1], 0.9985 * 1.015),
        # 2: B has no bar: its weight cannot change and it earns nothing (price carried).
        ([0.5, -0.5], [0.5, 0.5], [lg(1.01), 0.0], [0, 0], [1, 0], [1, 1], 1.005),
        # 3: B is delisted after this bar: closed at its last price, paying 0.5 x 20 bps.
        ([0.5, -0.5], [0.5, -0.5], [lg(0.98), 0.0], [0, 0], [1, 1], [1, 0], 0.999 * 0.99),
        # 4: a NaN tick on A: a zero return, not NaN; nothing traded.
        ([0.5, 0.0], [0.5, 0.0], [float("nan"), 0.0], [0, 0], [1, 1], [1, 0], 1.0),
        # 5: next-open fill: A flips to short at the open after a +1 % gap, then +1.98 %.
        (
            [0.5, 0.0],
            [-0.5, 0.0],
            [lg(1.03), 0.0],
            [lg(1.01), 0.0],
            [1, 1],
            [1, 0],
            (1 + 0.5 * 0.01 - 1.0 * 0.001) * (1 - 0.5 * (1.03 / 1.01 - 1)),
        ),
    ]
    weights_after = [[0.5, -0.5], [0.5, -0.5], [0.5, 0.0], [0.5, 0.0], [-0.5, 0.0]]
    for (prev, target, r, g, fill, listed, growth), after in zip(steps, weights_after, strict=True):
        out = portfolio_step(
            torch.tensor([prev]),
            torch.tensor([target]),
            torch.tensor([r]),
            torch.tensor([g]),
            torch.tensor([fill], dtype=torch.bool),
            torch.tensor([listed], dtype=torch.bool),
            cost,
        )
        torch.testing.assert_close(out.log_return, torch.tensor([math.log(growth)]))
        torch.testing.assert_close(out.weights, torch.tensor([after]))
        assert torch.isfinite(out.log_return).all()
    assert out.sanitized.tolist() == [0, 0]
    bad = portfolio_step(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.tensor([[float("nan"), 5.0]]),
        torch.zeros(1, 2),
        torch.ones(1, 2, dtype=torch.bool),
        torch.ones(1, 2, dtype=torch.bool),
        0.0,
    )
    assert bad.sanitized.tolist() == [1, 1] and bad.log_return.item() == 0.0


def test_position_limits():
    w = limit_weights(torch.tensor([[0.9, -0.9, 0.3]]), max_weight=0.5, max_gross=1.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, -0.5, 0.3]]) / 1.3)
    kept = limit_weights(torch.tensor([[0.2, -0.1]]), max_weight=0.5, max_gross=1.0)
    torch.testing.assert_close(kept, torch.tensor([[0.2, -0.1]]))


# -- evaluation ----------------------------------------------------------------------------


def test_equal_weight_aggregate_weights_and_ic():
    universe = aligned_universe()
    per_symbol = {s: backtest(m, "momentum_3", window=20) for s, m in universe.markets.items()}
    aggregate = equal_weight(per_symbol, "momentum_3")
    # Every timestamp any symbol traded, the mean of the sleeves' simple returns (a sleeve
    # without a bar there earns nothing).
    at = per_symbol["FULL"].timestamps[150]
    expected = (
        sum(
            float(r.returns[list(r.timestamps).index(at)]) if at in r.timestamps else 0.0
            for r in per_symbol.values()
        )
        / 3
    )
    np.testing.assert_allclose(
        np.expm1(aggregate.log_returns[list(aggregate.timestamps).index(at)]), expected
    )
    weights = weights_frame(per_symbol)
    assert set(np.unique(weights.to_numpy())) <= {-1 / 3, 0.0, 1 / 3}
    after_delisting = weights.index > per_symbol["SHORT"].timestamps[-1]
    assert (weights.loc[after_delisting, "SHORT"] == 0).all()
    # IC: a prediction equal to the realized return ranks perfectly.
    for result in per_symbol.values():
        result.preds["pred_1"] = result.market_returns.copy()
        result.targets["pred_1"] = result.market_returns.copy()
    ics = information_coefficients(per_symbol, "pred_1")
    assert len(ics) > 100 and np.allclose(ics, 1.0)


# -- the portfolio env -------------------------------------------------------------------


def test_the_portfolio_env_never_trades_a_symbol_on_a_bar_without_its_price():
    universe = aligned_universe()
    env = PortfolioEnv(universe, num_envs=8, episode_length=40, window=20, seed=1)
    has, listed = universe.has_bar(), universe.listed()
    gen = torch.Generator().manual_seed(0)
    obs, _ = env.reset()
    seen_gap = seen_delisting = False
    for _ in range(300):
        t = env.bar_index.clone()
        before = env.weights.clone()
        tradable = env.tradable()
        assert (obs[:, -3:] == tradable.float()).all()
        # Untradable: no bar of its own, too early in its life, or out of it.
        assert not (tradable & ~torch.from_numpy(has[t.numpy()])).any()
        obs, reward, _, _, info = env.step(torch.randint(0, 3, (8, 3), generator=gen))
        after = info["weights"]
        changed = after != before
        # A weight changes only where the symbol could fill, or where it is delisted (to 0).
        delisted = ~torch.from_numpy(listed[t.numpy() + 1])
        assert not (changed & ~tradable & ~delisted).any()
        assert (after[delisted] == 0).all()
        seen_gap |= bool(
            (~torch.from_numpy(has[t.numpy()]) & torch.from_numpy(listed[t.numpy()]))[:, 1].any()
        )
        seen_delisting |= bool((delisted & (before != 0)).any())
        assert torch.isfinite(reward).all()
    assert seen_gap and seen_delisting


def test_portfolio_model_masks_untradable_symbols_and_does_not_grow_with_them():
    universe = synthetic_market(800, seed=3, symbols=4, horizons=(1, 2))
    env = PortfolioEnv(universe, num_envs=5, episode_length=20, window=20)
    obs, _ = env.reset()
    obs[:, -4:] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # symbols 1 and 3 untradable
    model = PortfolioActorCritic(env.obs_spec, 4, hidden_dim=16, aux_labels=env.aux_labels)
    out = model(obs)
    assert out["action_logits"].shape == (5, 4, 3) and out["value"].shape == (5,)
    actions = torch.tensor([[0, 1, 2, 1]] * 5)
    logp, entropy = log_prob_and_entropy(out["action_logits"], actions, joint=True)
    per_symbol, per_entropy = log_prob_and_entropy(out["action_logits"], actions)
    torch.testing.assert_close(logp, per_symbol[:, [0, 2]].sum(1))
    torch.testing.assert_close(entropy, per_entropy[:, [0, 2]].sum(1))
    assert (per_symbol[:, [1, 3]] == 0).all() and (out["pred_1bars"][:, [1, 3]] == 0).all()
    (logp.sum() + entropy.sum()).backward()
    assert model.actor.weight.grad.abs().sum() > 0
    # The masked symbols' rows reach no gradient: changing them changes nothing.
    model.zero_grad()
    other = obs.clone()
    d = env.obs_spec.size
    other[:, d : 2 * d] = 7.0
    torch.testing.assert_close(
        model(other)["action_logits"][:, [0, 2]], out["action_logits"][:, [0, 2]].detach()
    )
    sizes = [
        sum(p.numel() for p in PortfolioActorCritic(env.obs_spec, n, hidden_dim=16).parameters())
        for n in (2, 20, 200)
    ]
    assert len(set(sizes)) == 1


def test_a_portfolio_agent_trains_and_its_backtest_is_the_envs_money():
    universe = synthetic_market(1200, seed=5, symbols=3, horizons=(1, 4))
    env = PortfolioEnv(universe, num_envs=8, episode_length=32, window=20, seed=0)
    model = PortfolioActorCritic(env.obs_spec, 3, hidden_dim=16, aux_labels=env.aux_labels)
    trainer = PPOTrainer(model, env, num_steps=16, batch_size=64, num_epochs=1, progress=False)
    rows = trainer.train(total_steps=2 * 8 * 16)
    assert all(
        math.isfinite(v)
        for row in rows
        for v in row.values()
        if isinstance(v, float) and not math.isnan(v)
    )
    run = portfolio_backtest(universe, model, window=20, fee=1e-4)
    steps = len(universe) - 20 - 4
    assert len(run.portfolio.log_returns) == steps and set(run.sleeves) == set(universe.symbols)
    # Replaying the walk's weights through the money function gives the same returns.
    weights = np.stack([run.sleeves[s].positions for s in universe.symbols], 1) / 3
    close = universe.aligned_close()[20 : 20 + steps + 1]
    log_returns = torch.from_numpy(np.diff(np.log(close), axis=0))
    previous = torch.from_numpy(np.vstack([np.zeros((1, 3)), weights[:-1]])).float()
    yes = torch.ones(steps, 3, dtype=torch.bool)
    money = portfolio_step(
        previous,
        torch.from_numpy(weights).float(),
        log_returns,
        torch.zeros(steps, 3),
        yes,
        yes,
        1e-4,
    )
    np.testing.assert_allclose(run.portfolio.log_returns, money.log_return.numpy(), atol=1e-6)
    # The sleeves (the per-symbol view) add up to the portfolio, to first order, with either
    # fill timing.
    for fill in ("close", "next_open"):
        run = portfolio_backtest(universe, model, window=20, fee=1e-4, spread=5.0, fill=fill)
        sleeves = sum(np.expm1(sleeve.log_returns) for sleeve in run.sleeves.values()) / 3
        np.testing.assert_allclose(np.log1p(sleeves), run.portfolio.log_returns, atol=1e-4)


def test_walk_forward_and_sweep_refuse_a_universe_in_one_line(tmp_path, capsys):
    from pyppo.cli import sweep_main, walkforward_main

    synthetic_market(600, seed=1, symbols=2).to_files(tmp_path / "universe")
    data = ["--data", str(tmp_path / "universe")]
    for main, what in ((walkforward_main, "pyppo-walkforward"), (sweep_main, "pyppo-sweep")):
        assert main([*data, "--run-dir", str(tmp_path / what)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"error: {what}") and "several symbols" in last
