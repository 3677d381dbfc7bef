package rdb_test

import (
	"context"
	"errors"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func TestCheckLayout(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()

	ns := redistest.Namespace(t)
	one := rdb.DB{C: c, K: rdb.NewKeysP(ns, 1)}
	if err := one.CheckLayout(ctx); err != nil {
		t.Fatalf("first check: %v", err)
	}
	if err := one.CheckLayout(ctx); err != nil {
		t.Fatalf("second check, same layout: %v", err)
	}
	three := rdb.DB{C: c, K: rdb.NewKeysP(ns, 3)}
	if err := three.CheckLayout(ctx); !errors.Is(err, rdb.ErrLayout) {
		t.Fatalf("check with another partition count = %v, want ErrLayout", err)
	}

	// A namespace of layout 1: indexed runs whose keys are elsewhere.
	old := redistest.Namespace(t) + "-old"
	db := rdb.DB{C: c, K: rdb.NewKeys(old)}
	if err := c.ZAdd(ctx, db.K.Runs(), redis.Z{Score: 1, Member: "R1"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: old + ":{R1}:log", Values: []any{"id", "x"}}).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Del(context.Background(), old+":{R1}:log", db.K.Runs(), db.K.Layout()) })
	err := db.CheckLayout(ctx)
	if !errors.Is(err, rdb.ErrLayout) {
		t.Fatalf("check of a layout-1 namespace = %v, want ErrLayout", err)
	}
	if n, _ := c.Exists(ctx, db.K.Layout()).Result(); n != 0 {
		t.Error("the refused check left its layout record behind")
	}
	t.Log(err)
}
