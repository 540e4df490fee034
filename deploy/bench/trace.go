package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// traceOnce sends one create-booking and one pickup with every statement
// of the application role logged, between markers, so the pgbench scripts
// can be checked against what the server really runs:
//
//	go run ./deploy/bench -trace all
//	sed -n '/bench trace: create/,/bench trace: end/p' /var/log/postgresql/postgresql-15-main.log
func traceOnce(ctx context.Context, e *env) error {
	t, err := e.signup(ctx, 1)
	if err != nil {
		return err
	}
	s, err := e.newSite(ctx, t, "Trace desk", 1)
	if err != nil {
		return err
	}
	if err := e.provision(ctx, t, &s); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, e.appURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	mark := func(what string) error {
		_, err := conn.Exec(ctx, "SELECT 'bench trace: "+what+"'")
		return err
	}
	if err := mark("create"); err != nil {
		return err
	}
	now := time.Now()
	b, err := e.book(ctx, t, s.keys[0], now.Add(-time.Hour), now.Add(2*time.Hour))
	if err != nil {
		return err
	}
	if err := mark("pickup"); err != nil {
		return err
	}
	var res exchange.Result
	if err := s.box.Call(ctx, 200, "POST", "/box/v1/pickups", exchange.PickupInput{Code: b.Code}, &res); err != nil {
		return err
	}
	if res.Result != "open" {
		return fmt.Errorf("pickup: %+v, want open", res)
	}
	if err := mark("end"); err != nil {
		return err
	}
	fmt.Printf("traced: the statements are in PostgreSQL's log between 'bench trace: create', 'bench trace: pickup' and 'bench trace: end' (database %s)\n", e.dbName)
	return nil
}
